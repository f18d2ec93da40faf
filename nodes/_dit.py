"""Flux and SD3.5 image prompts in ComfyUI: the block patch, through ComfyUI's public hooks only.

Each adapted block gets a `patches_replace["dit"]` entry (`("double_block", i)` / `("single_block", i)`: ComfyUI's
Flux `forward_orig` and MMDiT `forward_core_with_concat` call it with the block's inputs and the original block).
The entry runs the original block with one change to the call's `transformer_options`: an
`optimized_attention_override` (honoured by every attention call of current ComfyUI) that watches the block's
joint attention. From that call it takes the queries (and, for SD3.5, the image keys and values) and adds each
adapter's image term where its reference adds it:

- XLabs Flux: `SDPA(q, K_ip, V_ip)`, q the image queries after the block's QK-norm and before RoPE, added to the
  image stream after the block (diffusers' FluxIPAdapterAttnProcessor).
- InstantX Flux: the same attention with RMS-normed image keys, added to the attention output before the block's
  output projection: the image rows in double blocks, every row (text and image) in single blocks.
- InstantX SD3.5: `SDPA(norm_q(q), [norm_k(k); K_ip], [v; V_ip])` over the image stream's own q, k, v, added to
  the image rows of the attention output before the output projection.

The Flux attention call sees q after RoPE. RoPE turns each pair of channels by a 2x2 rotation, so the patch turns
it back with the call's own `pe` (exact up to rounding). The MMDiT call sees q and k after the block's RMSNorms
(`x / rms(x) * w`); dividing by w gives `x / rms(x)`, which the adapter's own RMSNorm maps to exactly what it
would make of x (RMSNorm does not depend on the scale of its input), up to the norms' eps.

Nothing replaces the model's forward, no object of the diffusion model is patched, and no single-slot wrapper is
taken. An entry already at the same key (another pack's, or one this pack installed before on a model it was
cloned from) runs inside ours as the block. Start/end gate on the call's sigmas on the device, cond/uncond rows
pick the positive or negative references by index; nothing is read back to the host.
"""

from __future__ import annotations

import torch

from ..ipadapter_core.dit.common import attend, heads
from ..ipadapter_core.masks import layer_grid, resize_masks

FLUX, MMDIT = "flux", "mmdit"
LATENT_INFO = "ipakit_dit_latent"  # transformer_options key: {"hw": latent (H, W), "txt": text tokens} of this call


class DitHostError(RuntimeError):
    """The host's block does not call attention the way this patch was written for (a changed ComfyUI)."""


def comfy_version() -> str:
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except ImportError:
        return "this ComfyUI version"


def move_args(target) -> dict | None:
    """What `patch.to(target)` should do to a tensor: ComfyUI calls `model_patches_to` with the device and then with
    the model's dtype; a storage dtype of fp8 (or a non-float one) is not a compute dtype and is ignored (None)."""
    if isinstance(target, torch.dtype):
        return {"dtype": target} if target.is_floating_point and target.itemsize >= 2 else None
    return {"device": torch.device(target)}


class Term:
    """One adapter's part in one block. `after`: added to the image stream after the block (XLabs); otherwise
    added to the attention output. Subclasses compute the unweighted term from the call."""

    after = False
    mask: torch.Tensor | None = None  # (H, W) on the image, 1 where the image prompt acts; None: everywhere

    def __init__(self, weight: float, sigma_range: tuple[float, float] | None) -> None:
        self.weight, self.sigma_range = weight, sigma_range

    def to(self, device) -> Term:
        return self

    def models(self) -> list:
        return []

    def compute(self, call: _Call) -> torch.Tensor:
        raise NotImplementedError


class KVTerm(Term):
    """Image keys and values fixed for the whole run: (2, heads, tokens, head_dim), row 0 positive, 1 negative."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, weight: float, sigma_range, *, after: bool,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__(weight, sigma_range)
        self.k, self.v, self.after, self.mask = k, v, after, mask

    def to(self, target) -> KVTerm:
        moved = move_args(target)
        if moved is None:
            return self
        mask = None if self.mask is None else self.mask.to(**moved)
        return KVTerm(self.k.to(**moved), self.v.to(**moved), self.weight, self.sigma_range, after=self.after, mask=mask)

    def compute(self, call: _Call) -> torch.Tensor:
        q = call.query()
        rows = call.rows(q.device)
        return attend(q, self.k.index_select(0, rows).to(q.dtype), self.v.index_select(0, rows).to(q.dtype))


class DitBlockPatch:
    """The `patches_replace["dit"]` entry of one block: its terms (every adapter chained on this model) and the
    entry that was there before (run as the block), if any."""

    def __init__(self, host: str, kind: str, terms: tuple[Term, ...], inner=None, txt_first: bool = True,
                 patch_size: int = 2) -> None:
        self.host, self.kind, self.terms, self.inner, self.txt_first = host, kind, terms, inner, txt_first
        self.patch_size = patch_size
        self._rows: dict[tuple, torch.Tensor] = {}

    def to(self, device) -> DitBlockPatch:
        inner = self.inner.to(device) if hasattr(self.inner, "to") else self.inner
        return DitBlockPatch(self.host, self.kind, tuple(t.to(device) for t in self.terms), inner, self.txt_first,
                             self.patch_size)

    def models(self) -> list:
        found = self.inner.models() if hasattr(self.inner, "models") else []
        for term in self.terms:
            found += [m for m in term.models() if m not in found]
        return found

    def chained(self, more: tuple[Term, ...]) -> DitBlockPatch:
        return DitBlockPatch(self.host, self.kind, self.terms + more, self.inner, self.txt_first, self.patch_size)

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        if self.inner is not None:
            inner, block = self.inner, original
            original = lambda a: inner(a, {**extra, "original_block": block})  # noqa: E731
        options = args.get("transformer_options") or {}
        call = _Call(self, args, options)
        out = original({**args, "transformer_options": {**options, "optimized_attention_override": call.override}})
        if not call.seen:
            raise DitHostError(
                f"IPAdapter Kit: a {self.kind} of this {'Flux' if self.host == FLUX else 'SD3'} model did not call "
                f"attention with its transformer_options, so the image prompt cannot enter it. {comfy_version()} is "
                "not supported for Flux/SD3.5 image prompts: update ComfyUI and IPAdapter Kit."
            )
        if call.after is not None:
            out = dict(out)
            out["img"] = out["img"] + call.after.to(out["img"].dtype)
        return out

    def row_index(self, options: dict, batch: int, device) -> torch.Tensor:
        """For each batch row, 0 (positive reference) or 1 (negative), from ComfyUI's cond_or_uncond."""
        cou = tuple(options.get("cond_or_uncond") or (0,))
        key = (cou, batch, str(device))
        index = self._rows.get(key)
        if index is None:
            per = max(batch // len(cou), 1)
            index = torch.tensor([1 if c == 1 else 0 for c in cou for _ in range(per)][:batch], device=device)
            self._rows[key] = index
        return index


class _Call:
    """One run of one patched block. Its first attention call is the joint attention the terms enter."""

    def __init__(self, patch: DitBlockPatch, args: dict, options: dict) -> None:
        self.patch, self.args, self.options = patch, args, options
        self.previous = options.get("optimized_attention_override")
        self.seen = False
        self.after: torch.Tensor | None = None
        self.q = self.k = self.v = None  # the call's tensors, (batch, heads, tokens, head_dim)
        self.pe = None
        self.image = slice(None)  # the query rows the terms read and write
        self._masks: dict = {}

    def override(self, func, *a, **kw):
        out = self.previous(func, *a, **kw) if self.previous is not None else func(*a, **kw)
        if self.seen:
            return out
        self.seen = True
        self._read(a, kw)
        total = None
        for term in self.patch.terms:
            add = term.compute(self) * term.weight
            add = add * self.gate(term, add)
            if term.mask is not None:
                add = add * self.mask_weights(term.mask, add)
            if term.after:
                self.after = add if self.after is None else self.after + add
            else:
                total = add if total is None else total + add
        if total is None:
            return out
        out = out.clone()
        out[:, self.image] += total.to(out.dtype)
        return out

    def _read(self, a: tuple, kw: dict) -> None:
        q, k, v = (a + (None, None, None))[:3] if a else (kw.get("q"), kw.get("k"), kw.get("v"))
        n_heads = a[3] if len(a) > 3 else kw.get("heads")
        patch = self.patch
        if patch.host == FLUX:
            pe = self.args.get("pe")
            if q is None or q.ndim != 4 or not kw.get("skip_reshape") or pe is None:
                raise DitHostError(
                    "IPAdapter Kit: Flux's joint attention no longer receives (batch, heads, tokens, head_dim) queries "
                    f"with rotary embeddings; {comfy_version()} is not supported for Flux image prompts: update "
                    "IPAdapter Kit."
                )
            txt = self.args["txt"].shape[1] if patch.kind == "double_block" else 0
            n = q.shape[2]
            self.image = slice(txt, None) if patch.txt_first else slice(0, n - txt)
            self.q, self.pe = q, pe
        else:
            if q is None or q.ndim != 3 or k is None or v is None or not isinstance(n_heads, int):
                raise DitHostError(
                    "IPAdapter Kit: SD3's joint attention no longer receives (batch, tokens, width) tensors and a head "
                    f"count; {comfy_version()} is not supported for SD3.5 image prompts: update IPAdapter Kit."
                )
            self.image = slice(self.args["txt"].shape[1], None)
            # q and k come merged (batch, tokens, width), v as (batch, tokens, heads, head_dim)
            self.q, self.k, self.v = (heads(t[:, self.image].reshape(t.shape[0], -1, q.shape[-1]), n_heads)
                                      for t in (q, k, v))

    def query(self) -> torch.Tensor:
        """Flux: the query rows before RoPE, (batch, heads, tokens, head_dim); computed once per call."""
        if self.pe is not None:
            self.q, self.pe = unrope(self.q[:, :, self.image], self.pe[:, :, self.image]), None
        return self.q

    def rows(self, device) -> torch.Tensor:
        return self.patch.row_index(self.options, self.q.shape[0], device)

    def mask_weights(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """(1, query rows, 1): the mask on the latent's image tokens; 0 on text rows and on image tokens that are not
        the latent's own (reference latents appended after them)."""
        info = self.options.get(LATENT_INFO) or {}
        rows = like.shape[1]
        if self.patch.host == FLUX and self.patch.kind == "single_block":
            txt = info.get("txt")
            if txt is None:
                raise DitHostError("IPAdapter Kit: a masked image prompt on a Flux single block needs the text length, "
                                   "which the pack's apply_model wrapper records; it did not run for this call")
        else:
            txt = 0
        hw = info.get("hw")
        if hw is not None:
            grid = (-(-hw[0] // self.patch.patch_size), -(-hw[1] // self.patch.patch_size))
        else:  # called without the wrapper: the grid of the image rows closest to the mask's aspect
            grid = layer_grid(rows - txt, aspect=mask.shape[-1] / mask.shape[-2])
        key = (id(mask), rows, txt, grid)
        cached = self._masks.get(key)
        if cached is not None:
            return cached
        image = resize_masks(mask[None].float(), grid)[0].to(like.device, like.dtype)
        weights = torch.zeros(rows, device=like.device, dtype=like.dtype)
        n = min(image.shape[0], rows - txt)
        weights[txt:txt + n] = image[:n]
        self._masks[key] = weights.view(1, rows, 1)
        return self._masks[key]

    def gate(self, term: Term, like: torch.Tensor) -> torch.Tensor | float:
        """1 where this row's sigma is inside the term's start/end range, else 0, as a (batch, 1, 1) tensor."""
        sigmas = self.options.get("sigmas")
        if term.sigma_range is None or sigmas is None:
            return 1.0
        s = sigmas.reshape(-1).to(like.device)
        if s.shape[0] != like.shape[0]:
            s = s[:1].expand(like.shape[0])
        start, end = term.sigma_range
        return ((s <= start) & (s >= end)).to(like.dtype).view(-1, 1, 1)


def unrope(q: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """Undo ComfyUI Flux's rotary embedding: q (batch, heads, tokens, head_dim) after RoPE with `pe`
    (batch, 1, tokens, head_dim / 2, 2, 2) -> q before it. Each pair of channels was multiplied by a 2x2 rotation;
    its transpose rotates it back."""
    pairs = q.to(pe.dtype).reshape(*q.shape[:-1], -1, 2)
    y0, y1 = pairs[..., 0], pairs[..., 1]
    x0 = pe[..., 0, 0] * y0 + pe[..., 1, 0] * y1  # elementwise: 2-4x faster than an einsum over the 2x2 blocks
    x1 = pe[..., 0, 1] * y0 + pe[..., 1, 1] * y1
    return torch.stack((x0, x1), dim=-1).reshape(q.shape).to(q.dtype)


def record_latent(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
    """APPLY_MODEL wrapper (stackable, keyed): note this call's latent size and text length in its own copy of
    transformer_options, for masked image prompts."""
    if transformer_options is not None:
        context = c_crossattn if c_crossattn is not None else kwargs.get("context")
        transformer_options[LATENT_INFO] = {"hw": tuple(x.shape[-2:]),
                                            "txt": None if context is None else context.shape[1]}
    return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)


def install(model, host: str, terms: dict[tuple[str, int], Term], *, txt_first: bool = True, patch_size: int = 2):
    """A clone of `model` with one patch per block, chained onto the entries already there (and, for masks, the
    wrapper that tells the patches the latent's size)."""
    if not terms:
        return model
    model = model.clone()
    existing = model.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for (kind, index), term in terms.items():
        current = existing.get((kind, index))
        if isinstance(current, DitBlockPatch):
            patch = current.chained((term,))
        else:
            patch = DitBlockPatch(host, kind, (term,), inner=current, txt_first=txt_first, patch_size=patch_size)
        model.set_model_patch_replace(patch, "dit", kind, index)
    if any(term.mask is not None for term in terms.values()):
        import comfy.patcher_extension

        model.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, LATENT_INFO)
        model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, LATENT_INFO, record_latent)
    return model
