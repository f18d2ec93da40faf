"""Writes and checks `ipadapter_core/migration/ours.py`, the converter's static table of this pack's node inputs.

The converter runs under a bare python3 (no ComfyUI, no torch), so it cannot read `INPUT_TYPES`; this module reads
them from the live node classes and renders the table. `tests/test_migration.py` fails when the file is stale.

    .venv/bin/python -m dev.migration.ours_table write    # after changing a node's inputs
    .venv/bin/python -m dev.migration.ours_table check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TABLE = Path(__file__).resolve().parents[2] / "ipadapter_core" / "migration" / "ours.py"
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")
SEED_NAMES = ("seed", "noise_seed")  # INT widgets the frontend follows with control_after_generate

HEADER = '''"""This pack's node inputs as the converter needs them, without ComfyUI: generated from the live `INPUT_TYPES`
by `dev/migration/ours_table.py` (`.venv/bin/python -m dev.migration.ours_table write`); a test fails when it is stale.

Per node id: (inputs in `INPUT_TYPES` order, required then optional; outputs as (type, name)). An input is
`(name, type)` for a socket (forceInput numbers included) or `(name, kind, default)` for a widget (kind INT, FLOAT,
STRING, BOOLEAN or COMBO; default None where the option list is a folder listing), with a fourth element
"control" where the frontend adds a control_after_generate value after it.
"""

# fmt: off
NODES: dict[str, tuple[tuple[tuple, ...], tuple[tuple[str, str], ...]]] = {
'''


def describe(cls) -> tuple[tuple[tuple, ...], tuple[tuple[str, str], ...]]:
    """(inputs, outputs) of a node class, in the table's form."""
    spec = cls.INPUT_TYPES()
    inputs = []
    for group in ("required", "optional"):
        for name, entry in (spec.get(group) or {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {})
            if opts.get("image_upload"):
                raise ValueError(f"{cls.__name__}.{name}: image_upload widgets are not supported by the converter's table")
            if isinstance(kind, list):
                inputs.append((name, "COMBO", opts.get("default")))
            elif kind in WIDGETS and not opts.get("forceInput"):
                default = opts.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind])
                control = kind == "INT" and (name in SEED_NAMES or opts.get("control_after_generate"))
                inputs.append((name, kind, default, "control") if control else (name, kind, default))
            else:
                inputs.append((name, kind))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return tuple(inputs), tuple(zip(cls.RETURN_TYPES, names))


def table(mappings: dict) -> dict:
    return {node_id: describe(cls) for node_id, cls in mappings.items()}


def display_names(registrations) -> dict[str, str]:
    """Node id -> display name, from the pack's registration table (`NODES`: id, class, display name)."""
    return {node_id: name for node_id, _, name in registrations}


def render(nodes: dict, display: dict[str, str]) -> str:
    lines = [HEADER]
    for node_id, (inputs, outputs) in nodes.items():
        lines.append(f"    {node_id!r}: (\n        (\n")
        lines.extend(f"            {item!r},\n" for item in inputs)
        lines.append(f"        ),\n        {outputs!r},\n    ),\n")
    lines.append("}\n\n# node id -> display name\nDISPLAY: dict[str, str] = {\n")
    lines.extend(f"    {node_id!r}: {name!r},\n" for node_id, name in display.items())
    lines.append("}\n# fmt: on\n")
    return "".join(lines)


def live_table() -> tuple[dict, dict[str, str]]:
    """The table of the pack's own nodes (not the compatibility ids) and their display names, from an in-process host."""
    from dev.host import comfy_host
    from dev.standins import names

    host = comfy_host.boot(names.MODELS_CACHE)
    return table({node_id: cls for node_id, cls, _ in host.pack.NODES}), display_names(host.pack.NODES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("write", "check"))
    args = parser.parse_args(argv)
    text = render(*live_table())
    if args.action == "write":
        TABLE.write_text(text)
        print(f"wrote {TABLE}")
        return 0
    if TABLE.read_text() != text:
        print(f"{TABLE} is stale; run: .venv/bin/python -m dev.migration.ours_table write", file=sys.stderr)
        return 1
    print(f"{TABLE} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
