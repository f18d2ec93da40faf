"""The test command's disk preflight (dev/run_tests.py): a full disk fails tests far from the cause, so the
command says so first, with the numbers."""

from __future__ import annotations

import shutil

from dev import run_tests


def test_disk_warning_counts_what_is_already_generated(tmp_path, monkeypatch):
    free_gib = shutil.disk_usage(tmp_path).free / 2**30
    monkeypatch.setattr(run_tests, "SUITE_DISK_GIB", free_gib + 1)
    warning = run_tests.disk_warning(tmp_path)
    assert warning is not None and "GiB free" in warning and str(tmp_path) in warning
    monkeypatch.setattr(run_tests, "SUITE_DISK_GIB", free_gib - 1)
    assert run_tests.disk_warning(tmp_path) is None
    # 2 GiB already generated (a sparse file: its size counts, it takes no room) lowers the need by 2 GiB
    (tmp_path / ".cache").mkdir()
    with open(tmp_path / ".cache" / "model.safetensors", "wb") as f:
        f.truncate(2 * 2**30)
    monkeypatch.setattr(run_tests, "SUITE_DISK_GIB", free_gib + 1)
    assert run_tests.disk_warning(tmp_path) is None
