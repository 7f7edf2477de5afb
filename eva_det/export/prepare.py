"""Export-time preparation of a built EVA-01 / EVA-02 detector: fixed-size position tables.

Tracing records what one forward pass computes. Two things in the EVA backbones compute tables
from the token grid at run time and would either break the exporters or put needless (and, for
TensorRT, unsupported) work in the graph:

* EVA-01 resizes its relative-position tables ``rel_pos_h`` / ``rel_pos_w`` to the grid every
  call (linear interpolation for ``interp_type="vitdet"``, BEiT's cubic spline, whose matrix is
  solved with ``torch.linalg.solve``, for ``"beit"``). :func:`prepare_for_export` resizes them
  once, ahead of time, for the grid each block sees at the config's input size (``square_pad``),
  so the forward pass finds tables of the right length and uses them as they are.
* EVA-02 computes its 2-D RoPE tables per grid (:class:`~eva_det.modeling.backbone.rope.
  VisionRotaryEmbedding2D`). They are replaced by :class:`FixedGridRope`, which holds the
  tables of the one grid as buffers (graph constants) and rotates with reshape / stack ops only,
  so the graph has no ScatterND (the official code's in-place slice writes become ScatterND).

Both backbones are also switched to the plain matmul + softmax attention (``attn_impl="plain"``,
the official formulation): the CPU default "blocked" kernel is an autograd function writing into
preallocated buffers, which the exporters cannot follow. Outputs equal the eager model's to float
rounding. The model is changed in place: prepare a model built for export, not one in use.
"""

import logging
from typing import Tuple

import torch
from torch import nn

from eva_det.modeling.backbone.rel_pos import resize_rel_pos
from eva_det.modeling.backbone.rope import VisionRotaryEmbedding2D, apply_rope

__all__ = ["FixedGridRope", "export_input_size", "prepare_for_export", "token_grid"]

logger = logging.getLogger(__name__)


class FixedGridRope(nn.Module):
    """The EVA-02 rotary embedding of one token grid, with its tables as constant buffers.

    Args:
        rope (VisionRotaryEmbedding2D): the module it replaces (frequencies and positions).
        grid (tuple[int, int]): the (h, w) token grid every call will see.
    """

    def __init__(self, rope: VisionRotaryEmbedding2D, grid: Tuple[int, int]):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        cos, sin = rope.cos_sin(self.grid, torch.device("cpu"))  # (h*w, head_dim) each
        # not persistent: the state dict stays the one of the eager model
        self.register_buffer("cos", cos.clone(), persistent=False)
        self.register_buffer("sin", sin.clone(), persistent=False)

    def extra_repr(self) -> str:
        return f"grid={self.grid}, head_dim={self.cos.shape[1]}"

    def forward(self, t: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """t: (B, heads, h*w, head_dim) rotated by the grid's tables; ``hw`` must be the grid."""
        # while tracing, hw holds traced sizes: the trace's input size is the grid's already
        if not torch.jit.is_tracing() and (int(hw[0]), int(hw[1])) != self.grid:
            raise ValueError(
                f"FixedGridRope holds the tables of grid {self.grid}, called for {tuple(hw)}: "
                "export at the config's input size (model.backbone.square_pad)"
            )
        compute_dtype = torch.promote_types(t.dtype, torch.float32)
        return apply_rope(t.to(compute_dtype), self.cos, self.sin).to(t.dtype)


def export_input_size(backbone: nn.Module) -> int:
    """The square input side of an exported detector: its backbone's ``square_pad``.

    Args:
        backbone (nn.Module): a ``SimpleFeaturePyramid`` (``padding_constraints["square_size"]``).

    Raises:
        ValueError: the backbone pads to no fixed size (``square_pad=0`` or no such option).
    """
    size = int(getattr(backbone, "padding_constraints", {}).get("square_size", 0) or 0)
    if size <= 0:
        raise ValueError(
            "model.backbone.square_pad is 0 or absent: export needs a fixed input size; "
            "set model.backbone.square_pad=SIZE (the eva_det recipes do)"
        )
    return size


def token_grid(net: nn.Module, input_size: int) -> int:
    """Tokens per side of ViT ``net`` (with a ``patch_embed.proj`` conv) at ``input_size`` px."""
    stride = net.patch_embed.proj.stride[0]
    if input_size % stride:
        raise ValueError(f"input size {input_size} is not a multiple of the patch size {stride}")
    return input_size // stride


def _block_grid(block: nn.Module, grid: int) -> int:
    window = int(getattr(block, "window_size", 0) or 0)
    return window if window > 0 else grid


@torch.no_grad()
def prepare_for_export(model: nn.Module) -> dict:
    """Fix the position tables of ``model``'s ViT for its export input size, in place.

    Args:
        model (nn.Module): a detector (``model.backbone.net`` an EVA-01 ``EVAViT`` or EVA-02
            ``EVA02ViT`` inside a ``SimpleFeaturePyramid``), or such a pyramid itself.

    Returns:
        dict: what was done, ``{"input_size", "token_grid", "rel_pos_resized",
        "rope_fixed", "attn_impl"}`` (counts of blocks changed), for the export summary.
    """
    backbone = model.backbone if hasattr(model, "backbone") else model
    size = export_input_size(backbone)
    net = backbone.net
    grid = token_grid(net, size)
    resized = fixed = switched = 0
    for block in net.blocks:
        attn = block.attn
        n = _block_grid(block, grid)
        if getattr(attn, "use_rel_pos", False):
            for name in ("rel_pos_h", "rel_pos_w"):
                table = getattr(attn, name)
                if table.shape[0] != 2 * n - 1:
                    new = resize_rel_pos(table.detach(), 2 * n - 1, attn.interp_type)
                    setattr(attn, name, nn.Parameter(new.contiguous(), requires_grad=False))
                    resized += 1
        rope = getattr(attn, "rope", None)
        if isinstance(rope, VisionRotaryEmbedding2D):
            attn.rope = FixedGridRope(rope, (n, n))
            fixed += 1
        if getattr(attn, "attn_impl", "plain") != "plain":
            attn.attn_impl = "plain"
            switched += 1
    info = {
        "input_size": size,
        "token_grid": grid,
        "rel_pos_resized": resized,
        "rope_fixed": fixed,
        "attn_impl": switched,
    }
    logger.info(
        "Prepared for export at %d px (token grid %d): %d rel-pos tables resized ahead of time, "
        "%d RoPE modules with constant tables, %d attention modules switched to 'plain'",
        size,
        grid,
        resized,
        fixed,
        switched,
    )
    return info
