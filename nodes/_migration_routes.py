"""The server side of "bring your workflows": the route the frontend extension converts workflows through, and
ComfyUI's node-replacement registration where the host has it.

Both exist only inside a running ComfyUI server (`PromptServer.instance`); elsewhere (tests, scripts) registering
does nothing. Routes must be added while custom nodes load, before the server freezes its route table, which is
why the pack's `__init__` calls `register` at import.

- `GET  /ipadapter_kit/migration`: the older pack's ids, which of them convert, whether that pack is installed
  and whether this pack answers to its ids;
- `POST /ipadapter_kit/migration/convert` with a UI-format workflow or an API-format prompt (or
  `{"workflow": ...}`): `{"workflow", "report", "markdown", "summary"}`; 400 with `{"error"}` for anything else.
"""

from __future__ import annotations

import json
import logging

from ..ipadapter_core.migration import CONVERTED_IDS, LEGACY, OLD_IDS, PLANS, convert

log = logging.getLogger(__name__)

BASE = "/ipadapter_kit/migration"
MAX_BYTES = 32 * 1024 * 1024


def info(older_pack: str | None, registered: list[str]) -> dict:
    return {"old_ids": list(OLD_IDS), "converted_ids": list(CONVERTED_IDS),
            "kept_ids": {i: PLANS[i].missing for i in OLD_IDS if PLANS[i].new is None},
            "older_pack": older_pack, "legacy_ids_registered": sorted(registered)}


def convert_body(raw: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON answer) for a POSTed body; never raises."""
    if len(raw) > MAX_BYTES:
        return 413, {"error": f"the workflow is {len(raw)} bytes; at most {MAX_BYTES} are accepted"}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return 400, {"error": f"the request body is not JSON ({e}); POST the workflow as JSON"}
    if isinstance(data, dict) and isinstance(data.get("workflow"), dict):
        data = data["workflow"]
    try:
        converted, report = convert(data, source="workflow")
    except ValueError as e:
        return 400, {"error": str(e)}
    except Exception as e:  # a workflow shape nobody foresaw must not take the server down
        log.exception("IPAdapter Kit: converting a workflow failed")
        return 400, {"error": f"could not convert this workflow ({type(e).__name__}: {e}); please report it with the file"}
    return 200, {"workflow": converted, "report": report.to_dict(), "markdown": report.to_markdown(),
                 "summary": report.summary()}


def register(older_pack: str | None, registered: list[str]) -> bool:
    """Add the routes (and node replacements) to the running server; False where there is none."""
    try:
        import server
        from aiohttp import web
    except ImportError:
        return False
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return False
    routes = instance.routes

    @routes.get(BASE)
    async def get_info(request):
        return web.json_response(info(older_pack, registered))

    @routes.post(f"{BASE}/convert")
    async def post_convert(request):
        status, answer = convert_body(await request.read())
        return web.json_response(answer, status=status)

    if older_pack is None:
        register_node_replacements()
    return True


# ComfyUI's node replacement (newer hosts): offered by the frontend for node types that are missing


def node_replacements() -> list[dict]:
    """The mappings ComfyUI's node-replacement format can express: a plain rename of inputs with fixed values,
    no translated options, no choice of node by its links. The rest are converted by the extension only."""
    out = []
    for old_id in CONVERTED_IDS:
        plan = PLANS[old_id]
        if plan.translate or plan.variants or plan.adjust:
            continue
        legacy = LEGACY[old_id]
        inputs = [{"new_id": plan.our_name(i.name), "old_id": i.name} for i in legacy.inputs if plan.our_name(i.name)]
        inputs += [{"new_id": name, "set_value": value} for name, (value, _) in plan.fixed.items()]
        outputs = [{"new_idx": plan.our_output(i), "old_idx": i} for i in range(len(legacy.outputs))
                   if plan.our_output(i) is not None]
        out.append({"new_node_id": plan.new, "old_node_id": old_id, "old_widget_ids": [i.name for i in legacy.widgets],
                    "input_mapping": inputs, "output_mapping": outputs})
    return out


def register_node_replacements() -> int:
    """Register `node_replacements()` with the host's API where it has one; returns how many were registered."""
    try:
        from comfy_api.latest import ComfyAPI, io
    except ImportError:
        return 0
    replace = getattr(io, "NodeReplace", None)
    api = getattr(ComfyAPI(), "node_replacement", None) if replace is not None else None
    if api is None or not hasattr(api, "register"):
        return 0
    accepted = _parameters(replace)
    count = 0
    for mapping in node_replacements():
        try:
            # releases differ in the fields they take (old_widget_ids came later): pass those this host knows
            _finish(api.register(replace(**{k: v for k, v in mapping.items() if accepted is None or k in accepted})))
            count += 1
        except Exception:  # an API that changed shape must not stop the pack from loading
            log.warning("IPAdapter Kit: could not register the node replacement for %s", mapping["old_node_id"], exc_info=True)
            break
    return count


def _parameters(cls) -> set[str] | None:
    """The keyword names `cls(...)` takes; None when it takes any (or cannot be inspected)."""
    import inspect

    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _finish(result) -> None:
    """Run a coroutine the registration API returned, which stores the mapping without waiting on anything."""
    if not hasattr(result, "send"):
        return
    try:
        result.send(None)
    except StopIteration:
        return
    result.close()
    raise RuntimeError("the node-replacement registration waits on the event loop; skipped")
