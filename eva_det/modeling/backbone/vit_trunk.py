"""The ViTDet trunk both EVA backbones share: patch embedding, absolute position embedding, the
block loop with activation checkpointing, and weight init.

:class:`EVAViT` (EVA-01) and :class:`EVA02ViT` differ only in their blocks (attention with the
decomposed relative position bias + GELU MLP vs. RoPE attention + SwiGLU); everything around the
blocks is :class:`ViTTrunk`. Parameter names are those of the official ViTs: ``patch_embed.proj``,
``pos_embed``, ``blocks.{i}``. Activation checkpointing wraps the call, never the module, so it
renames nothing.
"""

from typing import Callable, Dict, List, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.utils import (
    PatchEmbed,
    get_abs_pos,
    window_partition,
    window_unpartition,
)

from ...errors import InputError
from .norm import LayerNormWithForceFP32

__all__ = [
    "ViTTrunk",
    "attend_in_windows",
    "build_blocks",
    "check_block_indexes",
    "drop_path_rates",
]


def attend_in_windows(attn: nn.Module, x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Apply ``attn`` to each window of ``x`` (zero-padded to multiples of the window), or to the
    whole grid when ``window_size`` is 0 (a global block).

    Args:
        attn (nn.Module): maps (b, h, w, C) to (b, h, w, C).
        x (Tensor): (B, H, W, C) tokens.
        window_size (int): window side in tokens; 0 = global attention.

    Returns:
        Tensor: (B, H, W, C).
    """
    if window_size == 0:
        return attn(x)
    H, W = x.shape[1], x.shape[2]
    windows, pad_hw = window_partition(x, window_size)  # (B * num_windows, ws, ws, C)
    return window_unpartition(attn(windows), window_size, pad_hw, (H, W))  # (B, H, W, C)


def drop_path_rates(drop_path_rate: float, depth: int) -> List[float]:
    """Stochastic depth per block, linear from 0 at block 0 to ``drop_path_rate`` at the last."""
    return [x.item() for x in torch.linspace(0, drop_path_rate, depth)]


def check_block_indexes(depth: int, **indexes: Sequence[int]) -> None:
    """Raise InputError if an index (e.g. ``window_block_indexes=[...]``) is outside 0..depth-1."""
    for name, idx in indexes.items():
        bad = [i for i in idx if not 0 <= i < depth]
        if bad:
            raise InputError(
                f"block indexes {bad} in {name} are outside 0..{depth - 1} (depth={depth}): set "
                f"model.backbone.net.{name} to block numbers below depth."
            )


def build_blocks(
    make_block: Callable[..., nn.Module],
    depth: int,
    drop_path_rate: float,
    window_size: int,
    window_block_indexes: Sequence[int],
    residual_block_indexes: Sequence[int],
) -> nn.ModuleList:
    """The ViTDet block layout: ``depth`` blocks, windowed or global, with linear stochastic depth.

    Args:
        make_block (callable): called as ``make_block(drop_path=float, window_size=int,
            use_residual_block=bool)`` for block 0, 1, ... in order; the backbone binds all its
            other arguments (e.g. ``functools.partial(Block, dim=..., num_heads=...)``).
        depth (int): number of blocks.
        drop_path_rate (float): stochastic depth of the last block (linear from 0 at block 0).
        window_size (int): window side of the windowed blocks (the others get 0 = global).
        window_block_indexes (sequence[int]): blocks with window attention.
        residual_block_indexes (sequence[int]): blocks followed by a residual conv block.
    """
    check_block_indexes(
        depth,
        window_block_indexes=window_block_indexes,
        residual_block_indexes=residual_block_indexes,
    )
    dpr = drop_path_rates(drop_path_rate, depth)
    return nn.ModuleList(
        make_block(
            drop_path=dpr[i],
            window_size=window_size if i in window_block_indexes else 0,
            use_residual_block=i in residual_block_indexes,
        )
        for i in range(depth)
    )


class ViTTrunk(Backbone):
    """Everything of a ViTDet backbone but its blocks; subclasses set ``self.blocks``.

    A subclass calls ``super().__init__(...)``, builds ``self.blocks`` with :func:`build_blocks`
    (modules mapping (B, h, w, C) to (B, h, w, C)), then calls :meth:`init_weights`. In this order
    the random draws, the parameter order and the state-dict names equal the official ViTs'.

    Args:
        patch_size (int): patch side in pixels (= output stride).
        in_chans (int): input image channels.
        embed_dim (int): token channels.
        use_abs_pos (bool): add the absolute position embedding ``pos_embed`` of pretraining,
            bicubically resized to the token grid.
        pretrain_img_size (int): pretraining input size (sizes ``pos_embed``).
        pretrain_use_cls_token (bool): ``pos_embed`` has a leading cls slot (dropped when used).
        use_act_checkpoint (bool): recompute block activations in the backward pass. Only when
            the module is training and autograd is on; never in eval or under ``no_grad``.
        act_checkpoint_every (int): with ``use_act_checkpoint``, checkpoint only the blocks whose
            index is a multiple of this (1 = every block): less recomputation, more memory.
        out_feature (str): name of the output feature.
    """

    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        use_abs_pos: bool,
        pretrain_img_size: int,
        pretrain_use_cls_token: bool,
        use_act_checkpoint: bool,
        act_checkpoint_every: int,
        out_feature: str,
    ):
        super().__init__()
        if act_checkpoint_every < 1:
            raise InputError(
                f"act_checkpoint_every must be >= 1, got {act_checkpoint_every} "
                "(model.backbone.net.act_checkpoint_every; 1 = checkpoint every block)."
            )
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.act_checkpoint_every = act_checkpoint_every
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            num_patches = (pretrain_img_size // patch_size) ** 2
            num_positions = num_patches + 1 if pretrain_use_cls_token else num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}
        self._out_features = [out_feature]

    def init_weights(self) -> None:
        """ViT init: ``pos_embed`` and every Linear weight truncated normal (std 0.02), Linear
        biases 0, LayerNorms weight 1 / bias 0 (other modules keep their own init)."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, (nn.LayerNorm, LayerNormWithForceFP32)) and m.weight is not None:
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def checkpoints_block(self, i: int) -> bool:
        """Whether block ``i`` is recomputed in backward in the current mode."""
        return (
            self.use_act_checkpoint
            and self.training
            and torch.is_grad_enabled()
            and i % self.act_checkpoint_every == 0
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): (B, in_chans, H, W) images.

        Returns:
            dict[str, Tensor]: {out_feature: (B, embed_dim, H // patch_size, W // patch_size)}.
        """
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + get_abs_pos(
                self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2])
            )
        for i, blk in enumerate(self.blocks):
            if self.checkpoints_block(i):
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}  # (B, C, h, w)
