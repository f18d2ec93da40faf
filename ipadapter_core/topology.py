"""Where the cross-attention layers of a UNet are, in execution order and in checkpoint order.

The checkpoint numbers processors the way diffusers registers them (down blocks, up blocks, then the
mid block LAST; attn1 even, attn2 odd), while the UNet runs input -> middle -> output. Keeping both
orders in one table is what lets the middle block be patched with the right weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import FAMILY_BY_LAYERS, Family

BLOCK_ORDER_CKPT = ("input", "output", "middle")


@dataclass(frozen=True)
class CrossAttnLayer:
    """One attn2 of one BasicTransformerBlock."""

    block: str  # "input" | "middle" | "output"
    block_id: int  # index of the block in input_blocks / output_blocks (0 for the middle block)
    depth: int  # transformer block index inside its SpatialTransformer
    transformer_index: int  # SpatialTransformer counter in execution order (ComfyUI's transformer_index)
    width: int  # channel width of the attention
    heads: int
    checkpoint_index: int  # N: the processor index in the checkpoint (always odd)
    diffusers_block: str  # "down_blocks.k.attentions.j", "mid_block.attentions.0", "up_blocks.k.attentions.j"

    @property
    def key(self) -> tuple[str, int, int]:
        """The attn2 patch key a ComfyUI-style host uses: (block, id, depth)."""
        return (self.block, self.block_id, self.depth)

    def diffusers_processor(self, attn: int = 2) -> str:
        """diffusers' processor name for attn1 or attn2 of this transformer block."""
        return f"{self.diffusers_block}.transformer_blocks.{self.depth}.attn{attn}.processor"


@dataclass(frozen=True)
class Topology:
    """All cross-attention layers of one UNet, in execution order."""

    layers: tuple[CrossAttnLayer, ...]
    context_dim: int

    @property
    def family(self) -> Family | None:
        """SD1.5 or SDXL (Kolors included) by the layer count; None for other UNets."""
        return FAMILY_BY_LAYERS.get(len(self.layers))

    def describe(self) -> str:
        """For messages: "SD1.5 (context 768)", or the layer count of an unknown UNet."""
        n = len(self.layers)
        name = self.family.label if self.family else f"a UNet with {n} cross-attention layers"
        return f"{name} (context {self.context_dim})"

    @property
    def num_transformers(self) -> int:
        return 1 + max(layer.transformer_index for layer in self.layers)

    @property
    def widths_checkpoint_order(self) -> tuple[int, ...]:
        return tuple(layer.width for layer in sorted(self.layers, key=lambda x: x.checkpoint_index))

    @classmethod
    def from_transformers(
        cls,
        transformers: list[tuple[str, int, int, int, int]],
        *,
        context_dim: int,
        num_res_blocks: int,
    ) -> Topology:
        """Build the table from the SpatialTransformers of a UNet.

        Args:
            transformers: one `(block, block_id, depth, width, heads)` per SpatialTransformer in
                execution order (`depth` = number of transformer blocks inside it).
            num_res_blocks: res blocks per level of the down path; the up path has one more.
        """
        ckpt_order = sorted(
            range(len(transformers)),
            key=lambda i: (BLOCK_ORDER_CKPT.index(transformers[i][0]), i),
        )
        first_n: dict[int, int] = {}
        n = 0
        for i in ckpt_order:
            first_n[i] = n
            n += transformers[i][2]
        layers = []
        for t_idx, (block, block_id, depth, width, heads) in enumerate(transformers):
            name = _diffusers_block(block, block_id, num_res_blocks)
            for d in range(depth):
                layers.append(
                    CrossAttnLayer(
                        block=block,
                        block_id=block_id,
                        depth=d,
                        transformer_index=t_idx,
                        width=width,
                        heads=heads,
                        checkpoint_index=2 * (first_n[t_idx] + d) + 1,
                        diffusers_block=name,
                    )
                )
        return cls(layers=tuple(layers), context_dim=context_dim)

    @classmethod
    def sd15(cls, context_dim: int = 768) -> Topology:
        """SD1.5: 16 cross-attention layers, 8 heads everywhere."""
        widths = {1: 320, 2: 320, 4: 640, 5: 640, 7: 1280, 8: 1280}
        out_widths = {3: 1280, 4: 1280, 5: 1280, 6: 640, 7: 640, 8: 640, 9: 320, 10: 320, 11: 320}
        t = [("input", i, 1, w, 8) for i, w in widths.items()]
        t.append(("middle", 0, 1, 1280, 8))
        t += [("output", i, 1, w, 8) for i, w in out_widths.items()]
        return cls.from_transformers(t, context_dim=context_dim, num_res_blocks=2)

    @classmethod
    def sdxl(cls, context_dim: int = 2048) -> Topology:
        """SDXL (and Kolors): 70 cross-attention layers, head width 64."""
        t = [("input", 4, 2, 640, 10), ("input", 5, 2, 640, 10), ("input", 7, 10, 1280, 20), ("input", 8, 10, 1280, 20)]
        t.append(("middle", 0, 10, 1280, 20))
        t += [("output", i, 10, 1280, 20) for i in (0, 1, 2)]
        t += [("output", i, 2, 640, 10) for i in (3, 4, 5)]
        return cls.from_transformers(t, context_dim=context_dim, num_res_blocks=2)


def _diffusers_block(block: str, block_id: int, num_res_blocks: int) -> str:
    if block == "middle":
        return "mid_block.attentions.0"
    if block == "input":
        level, j = divmod(block_id - 1, num_res_blocks + 1)
        return f"down_blocks.{level}.attentions.{j}"
    level, j = divmod(block_id, num_res_blocks + 1)
    return f"up_blocks.{level}.attentions.{j}"
