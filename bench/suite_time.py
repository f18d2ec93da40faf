"""Test-suite time, then and now: two JUnit XML reports of the suite (pytest --junitxml) compared test by test.

    .venv/bin/python -m bench.suite_time BEFORE.xml AFTER.xml

Prints per test file the tests both reports hold and their time in each, then the totals: tests only in one report,
and the whole of each. "The same tests take no longer" is the common row; the whole rows include the tests the
suite gained or lost in between. Make the reports with `PYTEST_ADDOPTS=--junitxml=FILE python3 dev/run_tests.py`
on two clean clones (the before one checked out at the older commit), on the same machine, one after the other.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import defaultdict


def durations(path: str) -> dict[tuple[str, str], float]:
    """(test file, test name) -> seconds (setup, call and teardown), from a pytest JUnit report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        out[(case.get("classname", "").split(".")[-1], case.get("name", ""))] = float(case.get("time") or 0.0)
    return out


def table(before: dict, after: dict) -> list[str]:
    common = sorted(set(before) & set(after))
    per_file: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for key in common:
        row = per_file[key[0]]
        row[0] += 1
        row[1] += before[key]
        row[2] += after[key]
    lines = [f"{'test file':34s} {'tests':>6s} {'before s':>9s} {'after s':>9s}"]
    for name, (count, b, a) in sorted(per_file.items(), key=lambda item: -item[1][1]):
        lines.append(f"{name:34s} {count:6d} {b:9.1f} {a:9.1f}")
    only_before, only_after = set(before) - set(after), set(after) - set(before)
    lines += [
        f"{'same tests':34s} {len(common):6d} {sum(before[k] for k in common):9.1f} {sum(after[k] for k in common):9.1f}",
        f"{'only before (renamed or removed)':34s} {len(only_before):6d} {sum(before[k] for k in only_before):9.1f} {'':>9s}",
        f"{'only after (added)':34s} {len(only_after):6d} {'':>9s} {sum(after[k] for k in only_after):9.1f}",
        f"{'whole suite':34s} {'':6s} {sum(before.values()):9.1f} {sum(after.values()):9.1f}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="JUnit XML report of the older suite")
    parser.add_argument("after", help="JUnit XML report of the newer suite")
    args = parser.parse_args(argv)
    print("\n".join(table(durations(args.before), durations(args.after))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
