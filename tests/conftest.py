"""Session fixtures of the test suite. Heavy ones are lazy: only tests that ask for them pay.

- `models_dir`: Path of the model cache `.cache/models` (checkpoints/, clip_vision/, controlnet/,
  ipadapter/, ...), with the random ComfyUI models and the default IP-Adapter files generated once.
- `ipadapter_file`: factory `(variant, *, subdir=None, **kw) -> Path` for more IP-Adapter files there.
- `comfy`: the in-process ComfyUI host (dev.host.comfy_host.InProcessHost) with the pack loaded from
  custom_nodes/ipadapter_kit; `.run(class_id, **inputs)`, `.nodes`, `.NODE_CLASS_MAPPINGS`, `.pack`.
- `server`: a real ComfyUI server (dev.host.comfy_host.ServerHandle: `.url`, `.output_dir`, `.log_text()`),
  started once per session on a free port with the same models and a temporary output folder.
- `client`: a dev.host.comfy_client.ComfyClient for `server`, closed after the test.
- `dit_host`: `comfy` where the host has ComfyUI's Flux/SD3 block hooks (current ComfyUI); skips otherwise.
- `sd15_checkpoint`, `sdxl_small_checkpoint`, `vit_h`: the random models loaded in process, shared by the
  modules that use them; `pipe`: tests/_pipe.py's SD1.5 node pipeline over them (per module).
"""

from __future__ import annotations

import importlib.util

import pytest

import _host
from _pipe import Pipe
from dev.standins import comfy_models, names

# diffusers and transformers decide once, at import, whether torchvision exists. Decide it now, before
# the in-process host puts its import-only torchvision stand-in on sys.path, so neither tries to use it.
for _name in ("diffusers.utils.import_utils", "transformers.utils.import_utils"):
    if importlib.util.find_spec(_name.split(".")[0]) is not None:
        importlib.import_module(_name)


@pytest.fixture(scope="session")
def models_dir():
    names.MODELS_CACHE.mkdir(parents=True, exist_ok=True)
    comfy_models.ensure_models_in_child(names.MODELS_CACHE)
    for variant in _host.DEFAULT_IPADAPTERS:
        _host.ensure_ipadapter(variant, names.MODELS_CACHE)
    return names.MODELS_CACHE


@pytest.fixture(scope="session")
def ipadapter_file(models_dir):
    def make(variant: str, *, subdir: str | None = None, **kw):
        return _host.ensure_ipadapter(variant, models_dir, subdir=subdir, **kw)

    return make


@pytest.fixture(scope="session")
def comfy(models_dir, tmp_path_factory):
    from dev.host import comfy_host

    return comfy_host.boot(models_dir, output_dir=tmp_path_factory.mktemp("comfy-inprocess"))


@pytest.fixture(scope="session")
def server(models_dir, tmp_path_factory):
    from dev.host import comfy_host

    handle = comfy_host.start_server(None, models_dir, work_dir=tmp_path_factory.mktemp("comfy-server"))
    yield handle
    handle.stop()


@pytest.fixture
def client(server):
    from dev.host.comfy_client import ComfyClient

    with ComfyClient(server.url) as c:
        yield c


# models loaded once and shared by the in-process test modules (a full SD1.5 is 3.4 GB in fp32). The
# fixtures are module-scoped views of one session cache, so the cache can drop the last reference: it
# does before every test that uses the server (the server and the main job's server load models of
# their own, and the three processes together would not fit in CI's memory otherwise); an in-process
# test after that loads them again.


class SharedModels:
    """name -> loaded models, loaded on first use; `clear()` lets them go."""

    def __init__(self):
        self.loaded: dict[str, tuple] = {}

    def get(self, name: str, load):
        if name not in self.loaded:
            self.loaded[name] = load()
        return self.loaded[name]

    def clear(self) -> None:
        self.loaded.clear()
        _host.free_memory()


_SHARED = SharedModels()


def _order(item) -> int:
    """0: in process; 1: a module's own server (`OWN_SERVER = True` in the module); 2: the session server;
    3: tests marked `ends_session_server` (they stop it, so nothing may come after them)."""
    if item.get_closest_marker("ends_session_server"):
        return 3
    if "server" not in getattr(item, "fixturenames", ()):
        return 0
    return 1 if getattr(getattr(item, "module", None), "OWN_SERVER", False) else 2


def pytest_collection_modifyitems(items):
    """Tests that use a server run last (in their own order), those with a server of their own module before the
    session server starts: the server's models and the in-process ones, or two servers, are then never resident
    together, which keeps the suite's peak memory at one of them."""
    items.sort(key=_order)


def pytest_runtest_setup(item):
    if "server" in getattr(item, "fixturenames", ()) and _SHARED.loaded:
        _SHARED.clear()


@pytest.fixture(scope="module")
def sd15_checkpoint(comfy):
    """(MODEL, CLIP, VAE) of the random full-architecture SD1.5 checkpoint."""
    return _SHARED.get("sd15", lambda: comfy.outputs("CheckpointLoaderSimple", ckpt_name=names.SD15_CHECKPOINT))


@pytest.fixture(scope="module")
def sdxl_small_checkpoint(comfy):
    """(MODEL, CLIP, VAE) of the random SDXL checkpoint with the real 70-layer attention layout."""
    return _SHARED.get("sdxl", lambda: comfy.outputs("CheckpointLoaderSimple", ckpt_name=names.SDXL_SMALL_CHECKPOINT))


@pytest.fixture(scope="module")
def vit_h(comfy):
    """The random ViT-H/14 CLIP vision model."""
    return _SHARED.get("vit_h", lambda: comfy.outputs("CLIPVisionLoader", clip_name=names.VIT_H)[0])


@pytest.fixture(scope="session")
def dit_host(comfy):
    """The in-process host, for the Flux/SD3.5 tests: skipped on a ComfyUI without the DiT block hooks (the 2024
    test host has no Flux, SD3 or attention override; run them with IPAKIT_COMFYUI=<a current ComfyUI>)."""
    import importlib.util

    from comfy.ldm.modules import attention

    source = open(attention.__file__).read()
    if "optimized_attention_override" not in source or importlib.util.find_spec("comfy.ldm.flux") is None:
        pytest.skip("this ComfyUI has no Flux/SD3 block hooks with attention overrides; run with "
                    "IPAKIT_COMFYUI=<current ComfyUI>")
    return comfy


@pytest.fixture(scope="module")
def pipe(comfy, models_dir, sd15_checkpoint, vit_h):
    """The SD1.5 node pipeline of tests/_pipe.py (shared models, both SD1.5 adapters, one reference image)."""
    p = Pipe(comfy, sd15_checkpoint, vit_h)
    yield p
    del p
    _host.free_memory()
