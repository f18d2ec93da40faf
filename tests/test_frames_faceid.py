"""Apply FaceID with unfold_batch (issue 12): frame i gets the face of image i; an image without a face keeps its frame
(weight 0 there) instead of shifting the later faces onto earlier frames. Real insightface on the generated pack."""

from __future__ import annotations

import pytest
import torch
from test_frames_apply import TOL, Frames, max_delta

import _host
from _host import face_image
from _pipe import APPLY
from dev.host.torch_probes import attn2_patches

pytest.importorskip("insightface")

FACEID = dict(APPLY, weight_faceidv2=1.0, face_selection="largest", face_index=0, on_missing_face="skip image", lora_strength=0.0)


@pytest.fixture(scope="module")
def faceid(comfy, models_dir, sd15_checkpoint, vit_h):
    from dev.standins.insightface_pack import ensure_pack

    ensure_pack(models_dir / "insightface", "buffalo_l")
    insightface = comfy.outputs("IPAKitInsightFaceLoader", provider="CPU", model_name="buffalo_l")[0]
    adapter = comfy.outputs("IPAKitModelLoader", ipadapter_file=_host.ensure_ipadapter("faceid_sd15", models_dir).name)[0]
    model = sd15_checkpoint[0]

    def apply(image, **kw):
        args = dict(FACEID, insightface=insightface, clip_vision=vit_h)
        args.update(kw)
        return comfy.outputs("IPAKitApplyFaceID", model=model, ipadapter=adapter, image=image, **args)[0]

    yield model, apply
    _host.free_memory()


def test_unfolded_faces_follow_their_frames_and_a_missing_face_gets_weight_zero(faceid):
    model, apply = faceid
    dark = torch.full((1, 320, 320, 3), 1 / 255)  # no face
    images = torch.cat([face_image(1), dark, face_image(2)])
    patched = apply(images, weight=[0.9, 0.9, 1.2], unfold_batch=True, encode_batch_size=2)
    (term,) = attn2_patches(patched)[("input", 1, 0)].plan.frame_terms
    assert term.frame_slots[1] is None  # the frame without a face costs nothing
    frames = Frames(model, 3)
    out = frames(patched)
    assert max_delta(frames.pick(out, [1]), frames.pick(frames(model), [1])) <= 1e-6
    for f, image, weight in ((0, face_image(1), 0.9), (2, face_image(2), 1.2)):
        solo = frames(apply(image, weight=weight))
        assert max_delta(frames.pick(out, [f]), frames.pick(solo, [f])) <= TOL, f"frame {f}"
        assert max_delta(frames.pick(out, [f]), frames.pick(frames(model), [f])) > 1e-3
