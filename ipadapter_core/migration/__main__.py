"""Convert workflows of the older IPAdapter Plus pack to IPAdapter Kit (standard library only).

    python3 -m ipadapter_core.migration OLD.json [MORE.json ...] [-o OUT_DIR]

run from the pack's folder (custom_nodes/ipadapter_kit). Each file may be a UI-format workflow (as saved or
exported from ComfyUI) or an API-format prompt. For each, `NAME.ipakit.json` (the converted workflow) and
`NAME.ipakit.md` (the report: what became what and what behaves differently) are written next to it, or into
OUT_DIR. Exit status: 0 when every file was converted (nodes kept as they are are reported, not failures), 1 when a
file could not be read or is not a workflow, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import convert


def _outputs(path: Path, out_dir: Path | None, suffix: str) -> tuple[Path, Path]:
    folder = out_dir or path.parent
    stem = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
    return folder / f"{stem}{suffix}.json", folder / f"{stem}{suffix}.md"


def convert_file(path: Path, *, out_dir: Path | None = None, suffix: str = ".ipakit", report_format: str = "md") -> str:
    """Convert one file and write the results; returns the one-line summary. Raises ValueError or OSError."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give the path of a workflow .json saved or exported from ComfyUI")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; give a workflow .json saved or exported from ComfyUI") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno}); give a workflow .json saved or exported "
                         "from ComfyUI") from None
    converted, report = convert(data, source=path.name)
    target, report_path = _outputs(path, out_dir, suffix)
    if target.resolve() == path.resolve():
        raise ValueError(f"{path}: the output would overwrite the input; choose another --suffix or --out-dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(converted, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if report_format == "md":
        report_path.write_text(report.to_markdown(), encoding="utf-8")
    elif report_format == "json":
        report_path = report_path.with_suffix(".report.json")
        report_path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written = f" -> {target}" + (f" (report {report_path})" if report_format != "none" else "")
    return report.summary() + written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ipadapter_core.migration", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="workflow files (.json, UI or API format)")
    parser.add_argument("-o", "--out-dir", type=Path, help="write the results here instead of next to each file")
    parser.add_argument("--suffix", default=".ipakit", help="added to each output's name (default: .ipakit)")
    parser.add_argument("--report", choices=("md", "json", "none"), default="md", help="report format (default: md)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            sys.stdout.write(convert_file(path, out_dir=args.out_dir, suffix=args.suffix, report_format=args.report) + "\n")
        except (ValueError, OSError) as e:
            failed += 1
            sys.stderr.write(f"error: {e}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
