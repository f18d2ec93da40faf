"""Embeds: combine modes, encoder negatives, compatibility checks and safetensors IO with metadata."""

import json

import pytest
import torch

import ipadapter_core as core
from dev.standins.ipadapter import make_state_dict, write_checkpoint
from ipadapter_core.embeds import negative_features


def feats(n=3, shape=(5, 8), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_combine_methods():
    x = feats()
    assert torch.equal(core.combine_features(x, "concat"), x)
    assert torch.allclose(core.combine_features(x, "add"), x.sum(0, keepdim=True))
    assert torch.allclose(core.combine_features(x, "subtract"), x[:1] - (x[1] + x[2]) / 2)
    assert torch.allclose(core.combine_features(x, "average"), x.mean(0, keepdim=True))
    assert torch.equal(core.combine_features(x, "max"), x.max(0, keepdim=True).values)
    assert torch.equal(core.combine_features(x, "min"), x.min(0, keepdim=True).values)
    na = core.combine_features(x, "norm average")
    unit = x / x.norm(dim=-1, keepdim=True)
    direction = unit.mean(0, keepdim=True)
    assert torch.allclose(na / na.norm(dim=-1, keepdim=True), direction / direction.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(na.norm(dim=-1) / direction.norm(dim=-1), x.norm(dim=-1).mean(0, keepdim=True), atol=1e-5)
    for method in core.COMBINE_METHODS:
        assert torch.equal(core.combine_features(x[:1], method), x[:1])
    with pytest.raises(ValueError, match="unknown combine method"):
        core.combine_features(x, "median")


def test_combine_embeds_averages_negatives_and_concat_joins_references():
    a = core.ImageEmbeds(cond={"clip": feats(2)}, uncond={"clip": feats(2, seed=1)}, clip_output=core.ClipOutput.PENULTIMATE)
    b = core.ImageEmbeds(cond={"clip": feats(1, seed=2)}, uncond={"clip": feats(1, seed=3)}, clip_output=core.ClipOutput.PENULTIMATE)
    joined = core.concat([a, b])
    assert joined.count == 3 and torch.equal(joined.cond["clip"][2], b.cond["clip"][0])
    added = core.combine(joined, "add")
    assert added.count == 1 and torch.allclose(added.uncond["clip"], joined.uncond["clip"].mean(0, keepdim=True))
    other = core.ImageEmbeds(cond={"clip": feats(1, shape=(8,))}, clip_output=core.ClipOutput.IMAGE_EMBEDS)
    with pytest.raises(ValueError, match="different kinds"):
        core.concat([a, other])
    with pytest.raises(ValueError, match="negative 'clip' has shape"):
        core.ImageEmbeds(cond={"clip": feats(2)}, uncond={"clip": feats(1)})


def spec_of(variant, tmp_path):
    return core.load_adapter(write_checkpoint(make_state_dict(variant, scale="tiny"), tmp_path / f"{variant}.safetensors")).spec


def test_check_names_what_differs(tmp_path):
    plus = spec_of("plus_sd15", tmp_path)
    base = spec_of("sd15", tmp_path)
    faceid = spec_of("faceid_sd15", tmp_path)
    good = core.ImageEmbeds(cond={"clip": torch.zeros(1, 257, plus.clip_dim)}, clip_output=core.ClipOutput.PENULTIMATE)
    good.check(plus)
    with pytest.raises(ValueError, match=r"reads CLIP image_embeds .* these are penultimate"):
        good.check(base)
    with pytest.raises(ValueError, match="needs an InsightFace embedding"):
        good.check(faceid)
    raw = core.ImageEmbeds(cond={"face": torch.zeros(1, 512)}, face_normed=False)
    with pytest.raises(ValueError, match="reads normed face embeddings, these are raw"):
        raw.check(faceid)


class LinearEncoder:
    """A real (random linear) encoder over pixels, recording its batches."""

    def __init__(self, width=40, proj=32):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3 * 4 * 4, width, generator=g)
        self.p = torch.randn(width, proj, generator=g)
        self.batches = []

    def __call__(self, pixels):
        self.batches.append(pixels.shape[0])
        patches = torch.nn.functional.avg_pool2d(pixels, 56)  # [B, 3, 4, 4]
        tokens = patches.flatten(1) @ self.w  # [B, width]
        pen = tokens[:, None, :].expand(-1, 257, -1) + torch.arange(257.0)[None, :, None] * 0.01
        return {"penultimate": pen, "image_embeds": tokens @ self.p}


def test_encode_uses_one_batch_and_the_reference_negatives(tmp_path):
    plus = spec_of("plus_sd15", tmp_path)
    enc = LinearEncoder(width=plus.clip_dim)
    images = torch.rand(3, 300, 200, 3)
    cond, uncond = core.embeds.encode_clip(plus, enc, images)
    assert enc.batches == [4]  # 3 references + the zero-image negative in one pass
    assert cond.shape == (3, 257, plus.clip_dim)
    zero = enc(torch.zeros(1, 3, 224, 224))["penultimate"]
    assert torch.allclose(uncond, zero.expand(3, -1, -1))
    base = spec_of("sd15", tmp_path)
    enc = LinearEncoder(proj=base.clip_dim)
    cond, uncond = core.embeds.encode_clip(base, enc, images)
    assert enc.batches == [3] and torch.count_nonzero(uncond) == 0  # image_embeds negatives are zeros
    negative = torch.rand(1, 64, 64, 3)
    cond, uncond = core.embeds.encode_clip(base, enc, images, negative_images=negative)
    assert torch.allclose(uncond[2], enc(core.clip_pixels(negative))["image_embeds"][0], atol=1e-5)
    with pytest.raises(ValueError, match="2 negative images for 3 images"):
        core.embeds.encode_clip(base, enc, images, negative_images=torch.rand(2, 8, 8, 3))
    enc.batches.clear()
    core.embeds.encode_clip(base, enc, torch.rand(5, 224, 224, 3), batch_size=2)
    assert enc.batches == [2, 2, 1]


def test_negative_features_follow_the_reference(tmp_path):
    plus = spec_of("plus_sd15", tmp_path)
    e = core.ImageEmbeds(cond={"clip": torch.randn(2, 257, plus.clip_dim)}, clip_output=core.ClipOutput.PENULTIMATE)
    with pytest.raises(ValueError, match="connect a clip_vision model"):
        negative_features(plus, e)
    enc = LinearEncoder(width=plus.clip_dim)
    neg = negative_features(plus, e, enc)["clip"]
    assert neg.shape == (2, 257, plus.clip_dim) and torch.allclose(neg[1], enc(torch.zeros(1, 3, 224, 224))["penultimate"][0])
    face = core.ImageEmbeds(cond={"face": torch.randn(2, 512)}, face_normed=True)
    assert torch.count_nonzero(negative_features(spec_of("faceid_sd15", tmp_path), face)["face"]) == 0


def test_save_load_round_trip_with_metadata(tmp_path):
    e = core.ImageEmbeds(
        cond={"clip": torch.randn(2, 257, 40), "face": torch.randn(2, 512)},
        uncond={"clip": torch.randn(2, 257, 40), "face": torch.zeros(2, 512)},
        clip_encoder="ViT-H-14",
        clip_output=core.ClipOutput.PENULTIMATE,
        face_normed=True,
        adapter_kind=core.AdapterKind.FACEID_PLUS_V2,
    )
    path = core.save_embeds(e, tmp_path / "sub" / "e.safetensors")
    back = core.load_embeds(path)
    assert back.clip_encoder == "ViT-H-14" and back.clip_output is core.ClipOutput.PENULTIMATE
    assert back.face_normed is True and back.adapter_kind is core.AdapterKind.FACEID_PLUS_V2
    for group in ("cond", "uncond"):
        for k, v in getattr(e, group).items():
            assert torch.equal(getattr(back, group)[k], v)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "ipadapter_kit.embeds" and meta["format_version"] == "1"
    assert json.loads(meta["shapes"])["cond.clip"] == [2, 257, 40]


def test_load_rejects_foreign_newer_and_damaged_files(tmp_path):
    import safetensors.torch

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="not an IPAdapter Kit embeds file"):
        core.load_embeds(plain)
    newer = tmp_path / "newer.safetensors"
    safetensors.torch.save_file({"cond.clip": torch.zeros(1, 4)}, str(newer), metadata={"format": "ipadapter_kit.embeds", "format_version": "9"})
    with pytest.raises(ValueError, match="newer than this pack reads"):
        core.load_embeds(newer)
    lying = tmp_path / "lying.safetensors"
    safetensors.torch.save_file(
        {"cond.clip": torch.zeros(1, 4)}, str(lying), metadata={"format": "ipadapter_kit.embeds", "format_version": "1", "shapes": '{"cond.clip": [2, 4]}'}
    )
    with pytest.raises(ValueError, match="damaged"):
        core.load_embeds(lying)


def test_legacy_ipadpt_is_read_without_running_code(tmp_path):
    path = tmp_path / "old.ipadpt"
    torch.save(torch.randn(1, 257, 1280), path)
    e = core.load_embeds(path)
    assert e.clip_output is core.ClipOutput.PENULTIMATE and e.uncond == {}
    torch.save(torch.randn(2, 1024), path)
    assert core.load_embeds(path).clip_output is core.ClipOutput.IMAGE_EMBEDS

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save(Evil(), tmp_path / "evil.ipadpt")
    with pytest.raises(ValueError, match="refused"):
        core.load_embeds(tmp_path / "evil.ipadpt")


def test_kolors_faceid_negative_is_zero_hidden_states(tmp_path):
    nested = make_state_dict("kolors_faceid_plus", scale="tiny")
    spec = core.load_adapter(write_checkpoint(nested, tmp_path / "ipa-faceid-plus.bin", key_style="adapter_modules")).spec
    assert spec.family is core.Family.KOLORS and spec.zero_clip_negative
    enc = LinearEncoder(width=spec.clip_dim)
    cond, uncond = core.embeds.encode_clip(spec, enc, torch.rand(2, 336, 336, 3))
    assert enc.batches == [2] and torch.count_nonzero(uncond) == 0 and cond.shape == (2, 257, spec.clip_dim)
