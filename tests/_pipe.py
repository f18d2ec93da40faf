"""The in-process SD1.5 pipeline the node tests drive (the `pipe` fixture in conftest.py)."""

from __future__ import annotations

import torch

from dev.authoring.examples import APPLY_DEFAULTS
from dev.host.torch_probes import UNetCall

APPLY = APPLY_DEFAULTS  # the settings the examples apply


class Pipe:
    """The full SD1.5 checkpoint, ViT-H, both SD1.5 adapters, prompts and one reference image, driven through the nodes."""

    def __init__(self, comfy, checkpoint, clip_vision):
        self.comfy = comfy
        self.model, self.clip, self.vae = checkpoint
        self.clip_vision = clip_vision
        self.pos = comfy.outputs("CLIPTextEncode", text="a photo of a cat", clip=self.clip)[0]
        self.neg = comfy.outputs("CLIPTextEncode", text="blurry", clip=self.clip)[0]
        self.plus = comfy.outputs("IPAKitModelLoader", ipadapter_file="ip-adapter-plus_sd15.safetensors")[0]
        self.base = comfy.outputs("IPAKitModelLoader", ipadapter_file="ip-adapter_sd15.safetensors")[0]
        self.image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(0))

    def apply(self, model=None, adapter=None, image=None, **kw):
        args = dict(APPLY, clip_vision=self.clip_vision)
        args.update(kw)
        model = self.model if model is None else model
        return self.comfy.outputs("IPAKitApply", model=model, ipadapter=adapter or self.plus, image=self.image if image is None else image, **args)[0]

    def latent(self, w=64, h=64, batch=1):
        return self.comfy.outputs("EmptyLatentImage", width=w, height=h, batch_size=batch)[0]

    def sample(self, model, latent=None, cfg=7.0, denoise=1.0, positive=None, steps=1):
        return self.comfy.outputs(
            "KSampler", model=model, seed=3, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal",
            positive=positive or self.pos, negative=self.neg, latent_image=latent or self.latent(), denoise=denoise,
        )[0]["samples"]

    def eps(self, model, rows=(1, 0), hw=(8, 8), sigma=1.0, batch=1):
        """One UNet forward the way the sampler calls it, on the same random inputs every time."""
        return UNetCall(model, hw=hw, rows=rows, batch=batch, sigma=sigma, seed=5)(model)
