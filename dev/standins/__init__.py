"""Random-weight stand-in models in the real file layouts (real models cannot be downloaded in CI).

- `names`: the file names and folders the stand-ins are written under (imports no torch: import it for a name);
- `comfy_models`: ComfyUI checkpoints (SD1.5, SDXL-small), the ViT-H CLIP vision model, an SD1.5 ControlNet;
- `ipadapter`: IP-Adapter checkpoints in every published layout, full size or tiny;
- `insightface_pack`: tiny ONNX InsightFace packs (buffalo_l, antelopev2) that the real insightface runs.

Imports `dev.host` (to build ComfyUI's classes on the meta device), never `dev.authoring` or `dev.mainjob`.
"""
