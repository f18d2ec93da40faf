"""The example workflows of `workflows/`.

- `graph`: the workflow formats: the `Graph` definition language, rendering to ComfyUI's UI format,
  converting UI to API format, checking an API prompt against `/object_info`, `localize`;
- `pictures`: the reference images the examples load, and the thumbnails;
- `examples`: one definition per example, and the stand-in tables they run on in tests and the main job;
- `workflows`: the files under `workflows/` and the command line
  (`python -m dev.authoring.workflows write|check|api`).

`graph` imports nothing of dev/; `pictures` imports `graph`; `examples` imports `graph`, `pictures` and
`dev.standins.names`; `workflows` imports all of them and `dev.host`.
"""
