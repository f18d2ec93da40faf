"""The ComfyUI host that the tests, the main job and the benchmarks run the pack in.

- `setup_env`: `.venv` with the pinned packages, the bundled 2024 ComfyUI in `.host/ComfyUI`, the pack link
  (stdlib only: the README's commands import it under the machine's python3);
- `comfy_host`: ComfyUI booted in this process, or started as a server on 127.0.0.1;
- `comfy_client`: a stdlib-only client of a running server (HTTP API and the /ws progress socket);
- `insightface_073`: a side folder with insightface 0.7.3, for the tests that cover it next to 2.x;
- `torch_probes`: observation helpers of the performance tests and the benchmarks (imports torch).

Imports only the standard library, torch (torch_probes) and itself.
"""
