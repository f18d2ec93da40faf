"""Image prompts for diffusion transformers: the published Flux and SD3.5 IP-Adapters.

- `common`: the format names, the file reader every format shares, the norms and attention helpers.
- `xlabs`: XLabs-AI flux-ip-adapter v1/v2 (CLIP ViT-L `image_embeds`, 19 double blocks).
- `instantx_flux`: InstantX FLUX.1-dev-IP-Adapter (SigLIP pooled output, 19 double + 38 single blocks).
- `siglip_head`: SigLIP's attention-pooling head, which ComfyUI's SigLIP vision model does not compute.
- `sd3`: InstantX SD3.5-Large-IP-Adapter (timestep-conditioned resampler, joint attention).
- `formats`: detection of the three formats from tensor names and shapes, and loading.

Every image term here takes the host block's tensors in diffusers' layout (batch, heads, tokens, head_dim) and
returns what the reference adds, so the same functions serve the diffusers parity tests and the ComfyUI patch.
Like the rest of the core, nothing here imports ComfyUI.
"""
