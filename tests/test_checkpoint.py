"""Loading and detecting every published IP-Adapter layout, from generated files with the real key names."""

import os
from pathlib import Path

import pytest
import torch

import ipadapter_core as core
from dev.standins import names
from dev.standins.ipadapter import VARIANTS, ensure_checkpoint, make_state_dict, published_filename, write_checkpoint
from ipadapter_core import AdapterKind as K
from ipadapter_core import ClipOutput as O
from ipadapter_core import Family as F

CACHE = names.MODELS_CACHE / "ipadapter"

# variant -> kind, family, tokens per image, token width, CLIP encoder and output, LoRA rank
EXPECTED = {
    "sd15": (K.IMAGE_PROJ, F.SD15, 4, 768, "ViT-H-14", O.IMAGE_EMBEDS, None),
    "sd15_light": (K.IMAGE_PROJ, F.SD15, 4, 768, "ViT-H-14", O.IMAGE_EMBEDS, None),
    "sd15_vit-G": (K.IMAGE_PROJ, F.SD15, 4, 768, "ViT-bigG-14", O.IMAGE_EMBEDS, None),
    "plus_sd15": (K.PLUS, F.SD15, 16, 768, "ViT-H-14", O.PENULTIMATE, None),
    "plus-face_sd15": (K.PLUS, F.SD15, 16, 768, "ViT-H-14", O.PENULTIMATE, None),
    "full-face_sd15": (K.FULL_FACE, F.SD15, 257, 768, "ViT-H-14", O.PENULTIMATE, None),
    "composition_sd15": (K.PLUS, F.SD15, 16, 768, "ViT-H-14", O.PENULTIMATE, None),
    "sdxl": (K.IMAGE_PROJ, F.SDXL, 4, 2048, "ViT-bigG-14", O.IMAGE_EMBEDS, None),
    "sdxl_vit-h": (K.IMAGE_PROJ, F.SDXL, 4, 2048, "ViT-H-14", O.IMAGE_EMBEDS, None),
    "plus_sdxl_vit-h": (K.PLUS, F.SDXL, 16, 2048, "ViT-H-14", O.PENULTIMATE, None),
    "plus-face_sdxl_vit-h": (K.PLUS, F.SDXL, 16, 2048, "ViT-H-14", O.PENULTIMATE, None),
    "composition_sdxl": (K.PLUS, F.SDXL, 16, 2048, "ViT-H-14", O.PENULTIMATE, None),
    "faceid_sd15": (K.FACEID, F.SD15, 4, 768, None, None, 128),
    "faceid-plus_sd15": (K.FACEID_PLUS, F.SD15, 4, 768, "ViT-H-14", O.PENULTIMATE, 128),
    "faceid-plusv2_sd15": (K.FACEID_PLUS_V2, F.SD15, 4, 768, "ViT-H-14", O.PENULTIMATE, 128),
    "faceid-portrait_sd15": (K.PORTRAIT, F.SD15, 16, 768, None, None, None),
    "faceid-portrait-v11_sd15": (K.PORTRAIT, F.SD15, 16, 768, None, None, None),
    "faceid_sdxl": (K.FACEID, F.SDXL, 4, 2048, None, None, 128),
    "faceid-plusv2_sdxl": (K.FACEID_PLUS_V2, F.SDXL, 4, 2048, "ViT-H-14", O.PENULTIMATE, 128),
    "faceid-portrait_sdxl": (K.PORTRAIT, F.SDXL, 16, 2048, None, None, None),
    "faceid-portrait_sdxl_unnorm": (K.PORTRAIT_UNNORM, F.SDXL, 16, 2048, None, None, None),
    "kolors_plus": (K.PLUS, F.KOLORS, 16, 2048, "ViT-L-14-336", O.PENULTIMATE, None),
    "kolors_faceid_plus": (K.FACEID_PLUS_V2, F.KOLORS, 6, 4096, "ViT-L-14-336", O.PENULTIMATE, None),
}


def meta_raw(variant, **kw):
    nested = make_state_dict(variant, device="meta", **kw)
    return core.RawCheckpoint(Path(published_filename(variant)), nested["image_proj"], nested["ip_adapter"])


def test_every_variant_is_covered():
    assert set(EXPECTED) == set(VARIANTS)


def test_every_layout_row_is_a_published_layout_and_each_file_matches_the_first_row_that_fits():
    used = {}
    for variant in EXPECTED:
        proj = make_state_dict(variant, device="meta")["image_proj"]
        rows = [row for row in core.LAYOUTS if row.matches(proj)]
        assert rows, variant
        used.setdefault(rows[0].name, []).append(variant)
    assert set(used) == {row.name for row in core.LAYOUTS}  # no row that no published file has
    assert set(used["Resampler (latents, proj_in, layers.*)"]) == {
        "plus_sd15", "plus-face_sd15", "composition_sd15", "plus_sdxl_vit-h", "plus-face_sdxl_vit-h", "composition_sdxl",
        "faceid-portrait_sdxl_unnorm", "kolors_plus"}
    assert set(used["FaceID Plus (perceiver_resampler.*)"]) == {"faceid-plus_sd15", "faceid-plusv2_sd15", "faceid-plusv2_sdxl", "kolors_faceid_plus"}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_detect_full_size_layouts(variant):
    kind, family, tokens, token_dim, encoder, output, rank = EXPECTED[variant]
    raw = meta_raw(variant)
    spec = core.detect(raw)
    assert (spec.kind, spec.family, spec.num_tokens, spec.token_dim) == (kind, family, tokens, token_dim)
    assert (spec.clip_encoder, spec.clip_output, spec.lora_rank) == (encoder, output, rank)
    assert spec.num_layers == (16 if family is F.SD15 else 70)
    assert spec.cross_attention_dim == (768 if family is F.SD15 else 2048)
    if kind.uses_face:
        assert spec.face_dim == 512 and spec.face_normed == (kind is not K.PORTRAIT_UNNORM)
        assert spec.face_crop_size == {F.SD15: 224, F.SDXL: 256, F.KOLORS: 336}[family]
    if spec.clip_encoder:
        assert spec.clip_size == (336 if family is F.KOLORS else 224)
    # the strict load into modules named like the checkpoint is the validator (meta: shapes only)
    adapter = core.build_adapter(raw)
    n_params = sum(p.numel() for p in adapter.model.parameters()) + sum(t.numel() for t in adapter.lora.values())
    assert n_params == sum(t.numel() for t in raw.image_proj.values()) + sum(t.numel() for t in raw.ip_adapter.values())


@pytest.mark.parametrize("variant", sorted(EXPECTED))
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_tiny_files_round_trip_through_the_real_loader(variant, fmt, tmp_path):
    nested = make_state_dict(variant, scale="tiny", seed=1)
    key_style = "adapter_modules" if variant == "kolors_faceid_plus" else "published"
    path = write_checkpoint(nested, tmp_path / published_filename(variant, fmt), key_style=key_style)
    adapter = core.load_adapter(path)
    kind, family, tokens = EXPECTED[variant][:3]
    if variant == "kolors_plus":  # tiny CLIP widths cannot say "Kolors"; the layout is the SDXL plus one
        family = F.SDXL
    assert (adapter.spec.kind, adapter.spec.family, adapter.spec.num_tokens) == (kind, family, tokens)
    state = adapter.model.state_dict()
    for key, value in nested["image_proj"].items():
        assert torch.equal(state[f"image_proj.{key}"], value)
    for key, value in nested["ip_adapter"].items():
        target = adapter.lora[key] if "_lora." in key else state[f"ip_adapter.{key}"]
        assert torch.equal(target, value)


def test_adapter_modules_alias_and_raw_training_prefixes(tmp_path):
    nested = make_state_dict("plus_sd15", scale="tiny")
    a = core.load_adapter(write_checkpoint(nested, tmp_path / "a.safetensors", key_style="adapter_modules"))
    b = core.load_adapter(write_checkpoint(nested, tmp_path / "b.bin", key_style="adapter_modules"))
    flat = {f"image_proj_model.{k}": v for k, v in nested["image_proj"].items()}
    flat.update({f"adapter_modules.{k}": v for k, v in nested["ip_adapter"].items()})
    flat["unet.conv_in.weight"] = torch.zeros(2, 2)  # raw training checkpoints carry the UNet too
    torch.save(flat, tmp_path / "c.bin")
    c = core.load_adapter(tmp_path / "c.bin")
    assert a.spec == b.spec and a.spec.kind is c.spec.kind is K.PLUS


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant, fmt", [("plus_sd15", "safetensors"), ("plus_sdxl_vit-h", "safetensors"), ("faceid_sd15", "bin"), ("faceid-plusv2_sdxl", "safetensors")]
)
def test_full_size_files_load(variant, fmt):
    """One real-size file per family: the real byte sizes and the real loading path."""
    path = ensure_checkpoint(variant, CACHE, fmt=fmt)
    adapter = core.load_adapter(path)
    kind, family, tokens, token_dim = EXPECTED[variant][:4]
    assert (adapter.spec.kind, adapter.spec.family, adapter.spec.num_tokens, adapter.spec.token_dim) == (kind, family, tokens, token_dim)
    assert next(adapter.model.parameters()).dtype == torch.float16  # published files are fp16; nothing was upcast
    size_mb = os.path.getsize(path) / 1e6
    expected_mb = {"plus_sd15": 98.2, "plus_sdxl_vit-h": 847.5, "faceid_sd15": 96.7, "faceid-plusv2_sdxl": 1487.4}[variant]
    assert abs(size_mb - expected_mb) / expected_mb < 0.01


class _Payload:
    """A pickle that would create a file when loaded unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    nested = make_state_dict("sd15", scale="tiny")
    nested["ip_adapter"] = dict(nested["ip_adapter"], evil=_Payload(marker))
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        torch.save(nested, f)
    with pytest.raises(core.CheckpointError, match="refused: this file contains code, not only tensors.*Nothing from it was executed"):
        core.load_adapter(path)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "flat, message",
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "full Stable Diffusion checkpoint"),
        ({"vision_model.embeddings.class_embedding": torch.zeros(1)}, "CLIP vision model"),
        ({"lora_unet_down_blocks_0.alpha": torch.zeros(1)}, "LoRA"),
        ({"something.else": torch.zeros(1)}, "expected keys starting with `image_proj.`"),
    ],
)
def test_wrong_files_get_errors_that_say_what_they_are(flat, message, tmp_path):
    import safetensors.torch

    path = tmp_path / "wrong.safetensors"
    safetensors.torch.save_file(flat, str(path))
    with pytest.raises(core.CheckpointError, match=message) as info:
        core.load_adapter(path)
    assert "wrong.safetensors" in str(info.value)


def test_damaged_files(tmp_path):
    nested = make_state_dict("plus_sd15", scale="tiny")
    good = write_checkpoint(nested, tmp_path / "x.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(core.CheckpointError, match="cut.safetensors: not a readable safetensors file"):
        core.load_adapter(cut)
    missing = dict(nested["ip_adapter"])
    del missing["5.to_v_ip.weight"]
    with pytest.raises(core.CheckpointError, match="damaged"):
        core.load_adapter(write_checkpoint({"image_proj": nested["image_proj"], "ip_adapter": missing}, tmp_path / "m.safetensors"))
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        core.load_adapter(tmp_path / "nope.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a torch file")
    with pytest.raises(core.CheckpointError, match="junk.bin"):
        core.load_adapter(tmp_path / "junk.bin")


def test_faceid_plus_v1_v2_tie_break_and_override(tmp_path):
    nested = make_state_dict("faceid-plus_sd15", scale="tiny")
    v1 = write_checkpoint(nested, tmp_path / "ip-adapter-faceid-plus_sd15.safetensors")
    v2 = write_checkpoint(nested, tmp_path / "ip-adapter-faceid-plusv2_sd15.safetensors")
    assert core.load_adapter(v1).spec.kind is K.FACEID_PLUS
    spec2 = core.load_adapter(v2).spec
    assert spec2.kind is K.FACEID_PLUS_V2 and "plusv2" in spec2.name_hint
    assert core.load_adapter(v1, override="faceid_plus_v2").spec.kind is K.FACEID_PLUS_V2
    assert core.load_adapter(v2, override="faceid_plus").spec.kind is K.FACEID_PLUS
    with pytest.raises(core.CheckpointError, match="does not apply"):
        core.load_adapter(v1, override="unnorm")


def test_portrait_normed_unnorm_tie_break_and_override(tmp_path):
    nested = make_state_dict("faceid-portrait_sdxl", scale="tiny")
    plain = write_checkpoint(nested, tmp_path / "ip-adapter-faceid-portrait_sdxl.safetensors")
    named = write_checkpoint(nested, tmp_path / "portrait_sdxl_unnorm_mlp.safetensors")
    assert core.load_adapter(plain).spec.face_normed is True
    assert core.load_adapter(named).spec.face_normed is False
    assert core.load_adapter(plain, override="unnorm").spec.face_normed is False
    assert core.load_adapter(named, override="normed").spec.face_normed is True
    with pytest.raises(core.CheckpointError, match="does not apply"):
        core.load_adapter(write_checkpoint(make_state_dict("plus_sd15", scale="tiny"), tmp_path / "p.safetensors"), override="unnorm")


def test_unknown_topology_is_reported(tmp_path):
    nested = make_state_dict("sd15", scale="tiny", widths=(32,) * 5)
    with pytest.raises(core.CheckpointError, match="5 cross-attention layers"):
        core.load_adapter(write_checkpoint(nested, tmp_path / "odd.safetensors"))


def test_loading_copies_no_tensor(tmp_path):
    nested = make_state_dict("plus_sd15", scale="tiny")
    path = write_checkpoint(nested, tmp_path / "x.safetensors")
    raw = core.read_checkpoint(path)
    adapter = core.build_adapter(raw)
    assert adapter.model.image_proj.latents.data_ptr() == raw.image_proj["latents"].data_ptr()

