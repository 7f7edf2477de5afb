"""EVA-01 plain ViT for detection (ViTDet-style windowed + global attention).

State-dict names match the official EVA-01 detector (``backbone.net.*`` once wrapped in
detectron2's ``SimpleFeaturePyramid``): ``pos_embed``, ``patch_embed.proj``,
``blocks.{i}.{norm1,norm2}``, ``blocks.{i}.attn.{q_bias,v_bias,qkv,proj,rel_pos_h,rel_pos_w}``,
``blocks.{i}.mlp.{fc1,fc2}`` (timm's ``Mlp``, as the official code). Patch and position
embedding, the block loop with activation checkpointing and the init are
:class:`~eva_det.modeling.backbone.vit_trunk.ViTTrunk`, shared with EVA-02.
"""

import logging
from functools import partial
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.modeling.backbone.vit import ResBottleneckBlock
from timm.layers import DropPath, Mlp

from ...layers.rel_pos_attention import (
    ATTN_IMPLS,
    DEFAULT_MAX_MASK_BYTES,
    check_attn_impl,
    rel_pos_attention,
)
from .norm import LayerNormWithForceFP32
from .rel_pos import decomposed_rel_pos_bias
from .vit_trunk import ViTTrunk, attend_in_windows, build_blocks

logger = logging.getLogger(__name__)

__all__ = ["EVAViT", "Attention", "Block", "ATTN_IMPLS"]

DEFAULT_MAX_ATTN_MASK_MB = DEFAULT_MAX_MASK_BYTES / 2**20


class Attention(nn.Module):
    """Multi-head attention with the decomposed relative position bias.

    Args:
        dim (int): input channels.
        num_heads (int): attention heads.
        qkv_bias (bool): bias in the fused ``qkv`` Linear (ignored when ``beit_like_qkv_bias``).
        beit_like_qkv_bias (bool): ``qkv`` without bias plus learnable ``q_bias`` and ``v_bias``;
            the k bias is zero.
        use_rel_pos (bool): add the decomposed relative position bias.
        rel_pos_zero_init (bool): zero-initialise the tables (else truncated normal, std 0.02).
        input_size (tuple[int, int]): token grid the tables are sized for.
        interp_type (str): "vitdet" or "beit", how tables are resized to other grids.
        attn_impl (str): "auto" (default: "blocked" for float32 on CPU, else "sdpa"), "sdpa"
            (``F.scaled_dot_product_attention`` with the bias as a float mask), "blocked" (matmul +
            softmax in cache-sized blocks, nothing N x N allocated) or "plain" (matmul + softmax,
            the official formulation). All give the same output to float rounding; see
            :mod:`eva_det.layers.rel_pos_attention`.
        max_attn_mask_mb (float): with "sdpa", the largest bias mask built at once (MiB); larger
            ones are built and used one block of query rows at a time (same output, less memory).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        beit_like_qkv_bias: bool = False,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
        interp_type: str = "vitdet",
        attn_impl: str = "auto",
        max_attn_mask_mb: float = DEFAULT_MAX_ATTN_MASK_MB,
    ):
        super().__init__()
        check_attn_impl(attn_impl)
        if interp_type not in ("vitdet", "beit"):
            raise ValueError(f"interp_type must be 'vitdet' or 'beit', got {interp_type!r}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.beit_like_qkv_bias = beit_like_qkv_bias
        if beit_like_qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias and not beit_like_qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        self.interp_type = interp_type
        self.attn_impl = attn_impl
        if max_attn_mask_mb <= 0:
            raise ValueError(f"max_attn_mask_mb must be > 0, got {max_attn_mask_mb}")
        self.max_mask_bytes = int(max_attn_mask_mb * 2**20)
        if use_rel_pos:
            if input_size is None:
                raise ValueError("use_rel_pos=True needs input_size (the token grid)")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        if not self.beit_like_qkv_bias:
            return self.qkv(x)
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, _ = x.shape
        N = H * W
        # (3, B, heads, N, head_dim)
        qkv = self._qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        rel_h = rel_w = None
        if self.use_rel_pos:
            # rel_h (B*heads, H, W, H), rel_w (B*heads, H, W, W)
            rel_h, rel_w = decomposed_rel_pos_bias(
                q.reshape(B * self.num_heads, N, -1),
                self.rel_pos_h,
                self.rel_pos_w,
                (H, W),
                (H, W),
                self.interp_type,
            )
            rel_h = rel_h.reshape(B, self.num_heads, H, W, H)
            rel_w = rel_w.reshape(B, self.num_heads, H, W, W)
        out = rel_pos_attention(
            q, k, v, rel_h, rel_w, self.scale, self.attn_impl, self.max_mask_bytes
        )  # (B, heads, N, hd)
        out = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(out)


class Block(nn.Module):
    """Transformer block with optional window attention and residual conv block.

    Args:
        dim (int): channels.
        num_heads (int): attention heads.
        mlp_ratio (float): MLP hidden size / dim.
        qkv_bias (bool): see :class:`Attention`.
        drop_path (float): stochastic depth rate.
        norm_layer (callable): norm constructor, called with ``dim``.
        act_layer (callable): activation constructor.
        use_rel_pos (bool): add relative position bias.
        rel_pos_zero_init (bool): zero-init the relative position tables.
        window_size (int): window side in tokens; 0 means global attention.
        use_residual_block (bool): append a bottleneck conv block after the MLP.
        input_size (tuple[int, int]): token grid of global attention (tables sized for it).
        beit_like_qkv_bias (bool): see :class:`Attention`.
        beit_like_gamma (bool): learnable per-channel scales ``gamma_1``/``gamma_2`` on branches.
        interp_type (str): relative position resize mode.
        attn_impl (str): attention implementation, see :class:`Attention`.
        max_attn_mask_mb (float): see :class:`Attention`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNormWithForceFP32,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        use_residual_block: bool = False,
        input_size: Optional[Tuple[int, int]] = None,
        beit_like_qkv_bias: bool = False,
        beit_like_gamma: bool = False,
        interp_type: str = "vitdet",
        attn_impl: str = "auto",
        max_attn_mask_mb: float = DEFAULT_MAX_ATTN_MASK_MB,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            beit_like_qkv_bias=beit_like_qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
            interp_type=interp_type,
            attn_impl=attn_impl,
            max_attn_mask_mb=max_attn_mask_mb,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)  # fc1, act, fc2
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(
                in_channels=dim,
                out_channels=dim,
                bottleneck_channels=dim // 2,
                norm="LN",
                act_layer=act_layer,
            )
        self.beit_like_gamma = beit_like_gamma
        if beit_like_gamma:
            self.gamma_1 = nn.Parameter(torch.ones(dim))
            self.gamma_2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        shortcut = x
        x = attend_in_windows(self.attn, self.norm1(x), self.window_size)
        if self.beit_like_gamma:
            x = shortcut + self.drop_path(self.gamma_1 * x)
            x = x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))
        else:
            x = shortcut + self.drop_path(x)
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class EVAViT(ViTTrunk):
    """EVA-01 ViT backbone (constructor arguments as in the official ``ViT``).

    Args:
        img_size (int): training input size; sizes the global blocks' rel-pos tables.
        patch_size (int): patch side in pixels.
        in_chans (int): input channels.
        embed_dim (int): token channels.
        depth (int): number of blocks.
        num_heads (int): attention heads.
        mlp_ratio (float): MLP hidden size / embed_dim.
        qkv_bias (bool): bias in ``qkv`` (forced off by ``beit_like_qkv_bias``).
        drop_path_rate (float): stochastic depth at the last block (linear from 0).
        norm_layer (callable): norm constructor.
        act_layer (callable): activation constructor.
        use_abs_pos (bool): absolute position embedding from pretraining, resized to the grid.
        use_rel_pos (bool): decomposed relative position bias in every block.
        rel_pos_zero_init (bool): zero-init rel-pos tables.
        window_size (int): window side of windowed blocks.
        window_block_indexes (sequence[int]): blocks with window attention; the rest are global.
        residual_block_indexes (sequence[int]): blocks followed by a residual conv block.
        use_act_checkpoint (bool): recompute block activations in backward.
        act_checkpoint_every (int): with ``use_act_checkpoint``, checkpoint only blocks whose
            index is a multiple of this (1 = every block).
        pretrain_img_size (int): pretraining input size (sizes ``pos_embed``).
        pretrain_use_cls_token (bool): ``pos_embed`` has a leading cls slot.
        out_feature (str): name of the output feature.
        beit_like_qkv_bias (bool): ``q_bias``/``v_bias`` instead of a ``qkv`` bias.
        beit_like_gamma (bool): layer-scale parameters in blocks.
        freeze_patch_embed (bool): ``patch_embed`` parameters get no gradient.
        interp_type (str): "vitdet" (linear, training) or "beit" (cubic spline, eval) rel-pos
            resizing.
        attn_impl (str): attention implementation, see :class:`Attention`.
        max_attn_mask_mb (float): bound on one rel-pos bias mask with "sdpa" (MiB).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = LayerNormWithForceFP32,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
        act_checkpoint_every: int = 1,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
        beit_like_qkv_bias: bool = True,
        beit_like_gamma: bool = False,
        freeze_patch_embed: bool = False,
        interp_type: str = "vitdet",
        attn_impl: str = "auto",
        max_attn_mask_mb: float = DEFAULT_MAX_ATTN_MASK_MB,
    ):
        super().__init__(
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            use_abs_pos=use_abs_pos,
            pretrain_img_size=pretrain_img_size,
            pretrain_use_cls_token=pretrain_use_cls_token,
            use_act_checkpoint=use_act_checkpoint,
            act_checkpoint_every=act_checkpoint_every,
            out_feature=out_feature,
        )
        make_block = partial(
            Block,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            act_layer=act_layer,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=(img_size // patch_size, img_size // patch_size),
            beit_like_qkv_bias=beit_like_qkv_bias,
            beit_like_gamma=beit_like_gamma,
            interp_type=interp_type,
            attn_impl=attn_impl,
            max_attn_mask_mb=max_attn_mask_mb,
        )
        self.blocks = build_blocks(
            make_block,
            depth,
            drop_path_rate,
            window_size,
            window_block_indexes,
            residual_block_indexes,
        )
        self.init_weights()
        if freeze_patch_embed:
            for p in self.patch_embed.parameters():
                p.requires_grad = False
