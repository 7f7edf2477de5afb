"""EVA-02 ViT backbone for detectron2 (ViTDet layout: windowed + global attention blocks).

Differences from ViTDet's ViT: separate q/k/v projections with q and v biases, 2-D rotary position
embedding on queries and keys (:mod:`eva_det.modeling.backbone.rope`), SwiGLU MLP with a sub-LN,
no relative position bias. State-dict names equal the official EVA-02 detection code, whose
checkpoints also carry the RoPE tables as persistent buffers; :class:`EVA02ViT` drops those when a
state dict is loaded and recomputes the tables from the token grid, so any input size works.
Patch and position embedding, the block loop with activation checkpointing and the init are
:class:`~eva_det.modeling.backbone.vit_trunk.ViTTrunk`, shared with EVA-01; attention goes through
the same dispatcher and ``attn_impl`` vocabulary
(:func:`eva_det.layers.rel_pos_attention.rel_pos_attention`, called without a bias).
"""

from __future__ import annotations

import logging
import math
import re
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.vit import ResBottleneckBlock
from timm.layers import DropPath
from torch import nn

from eva_det.errors import InputError

from ...layers.rel_pos_attention import ATTN_IMPLS, check_attn_impl, rel_pos_attention
from .rope import VisionRotaryEmbedding2D, rope_cos_sin
from .vit_trunk import ViTTrunk, attend_in_windows, build_blocks

__all__ = ["EVA02ViT", "Attention", "SwiGLU", "Block", "ATTN_IMPLS"]

logger = logging.getLogger(__name__)

# RoPE tables stored as persistent buffers by the official code (relative to the ViT's prefix):
# ``rope_win``/``rope_glb`` on the detection ViT, ``rope`` on the MIM-pretraining ViT, and each
# block's ``attn.rope`` (the same modules seen again through every block).
_OFFICIAL_ROPE_KEY = re.compile(
    r"^(rope_win|rope_glb|rope|blocks\.\d+\.attn\.rope)\.freqs_(cos|sin)$"
)
# The SwiGLU output projection of a block (relative to the ViT's prefix); its ``ffn_ln``
# sibling tells the sub-LN layout apart.
_MLP_OUT_KEY = re.compile(r"^blocks\.\d+\.mlp\.w3\.weight$")


class SwiGLU(nn.Module):
    """SwiGLU MLP, with a LayerNorm on the hidden features when ``subln``:
    w3(ffn_ln(act(w1 x) * w2 x)); without sub-LN (EVA-02 Ti/S) w3(act(w1 x) * w2 x).

    Written here rather than taken from timm: timm's ``SwiGLU`` names its layers ``fc1_g``,
    ``fc1_x``, ``norm``, ``fc2``; the official EVA-02 checkpoints name them ``w1``, ``w2``,
    ``ffn_ln``, ``w3``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        subln: bool = True,
    ):
        """
        Args:
            in_features (int): input and output channels.
            hidden_features (int): hidden channels.
            act_layer (callable): gate activation (SiLU in EVA-02).
            norm_layer (callable): sub-LN applied to the gated hidden features.
            subln (bool): have the sub-LN ``ffn_ln`` (EVA-02 B/L); False: none (Ti/S).
        """
        super().__init__()
        self.w1 = nn.Linear(in_features, hidden_features)
        self.w2 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.ffn_ln = norm_layer(hidden_features) if subln else nn.Identity()
        self.w3 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.w1(x)) * self.w2(x)  # (..., hidden)
        return self.w3(self.ffn_ln(hidden))  # (..., in_features)


class Attention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias) and 2-D RoPE on queries and keys."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        rope: Optional[VisionRotaryEmbedding2D] = None,
        attn_impl: str = "sdpa",
    ):
        """
        Args:
            dim (int): input channels.
            num_heads (int): number of attention heads.
            qkv_bias (bool): learn biases for queries and values (the key bias is always zero).
            rope (VisionRotaryEmbedding2D or None): rotary embedding applied to q and k.
            attn_impl (str): one of :data:`~eva_det.layers.rel_pos_attention.ATTN_IMPLS`: "auto",
                "sdpa", "blocked" (without a bias: as "sdpa") or "plain" (matmul + softmax, the
                official ``xattn=False`` path); all give the same numbers.
        """
        super().__init__()
        self.num_heads = num_heads
        self.attn_impl = check_attn_impl(attn_impl)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = None
            self.v_bias = None
        self.rope = rope
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B, H, W, C) tokens of an H x W grid (a window or the whole map).

        Returns:
            Tensor: (B, H, W, C).
        """
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)  # (B, N, C)
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = F.linear(x, self.k_proj.weight)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        # (B, N, C) -> (B, heads, N, head_dim)
        q, k, v = (t.reshape(B, H * W, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.rope is not None:
            q = self.rope(q, (H, W))
            k = self.rope(k, (H, W))
        x = rel_pos_attention(q, k, v, impl=self.attn_impl)  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, H, W, C)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block: window or global RoPE attention, SwiGLU MLP, drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4 * 2 / 3,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        window_size: int = 0,
        use_residual_block: bool = False,
        rope: Optional[VisionRotaryEmbedding2D] = None,
        attn_impl: str = "sdpa",
        subln: bool = True,
    ):
        """
        Args:
            dim (int): input channels.
            num_heads (int): number of attention heads.
            mlp_ratio (float): SwiGLU hidden channels = int(dim * mlp_ratio).
            qkv_bias (bool): learn q and v biases.
            drop_path (float): stochastic depth rate.
            norm_layer (callable): normalization layer (norm1, norm2 and the SwiGLU sub-LN).
            act_layer (callable): SwiGLU gate activation.
            window_size (int): attention window; 0 means global attention.
            use_residual_block (bool): append a conv bottleneck block (ViTDet) after the MLP.
            rope (VisionRotaryEmbedding2D or None): rotary embedding of the attention.
            attn_impl (str): attention implementation, see :class:`Attention`.
            subln (bool): SwiGLU sub-LN (see :class:`SwiGLU`).
        """
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope, attn_impl=attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = SwiGLU(
            dim, int(dim * mlp_ratio), act_layer=act_layer, norm_layer=norm_layer, subln=subln
        )
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(dim, dim, dim // 2, norm="LN")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B, H, W, C).

        Returns:
            Tensor: (B, H, W, C).
        """
        shortcut = x
        x = attend_in_windows(self.attn, self.norm1(x), self.window_size)  # (B, H, W, C)
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # via (B, C, H, W)
        return x


class EVA02ViT(ViTTrunk):
    """
    EVA-02 ViT backbone (ViTDet layout) returning the last feature map at stride ``patch_size``.

    Constructor arguments keep the names of the official ``ViT`` so that official configs'
    ``model.backbone.net.*`` keys apply unchanged.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4 * 2 / 3,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        act_layer: Callable[[], nn.Module] = nn.SiLU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rope: bool = True,
        pt_hw_seq_len: int = 16,
        intp_freq: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
        act_checkpoint_every: int = 1,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
        xattn: bool = True,
        attn_impl: Optional[str] = None,
        subln: bool = True,
    ):
        """
        Args:
            img_size (int): training input size, accepted so official configs apply; not needed
                by the model, which runs at any input size (RoPE tables follow the token grid).
            patch_size (int): patch size (= output stride).
            in_chans (int): input image channels.
            embed_dim (int): token channels.
            depth (int): number of blocks.
            num_heads (int): attention heads per block; embed_dim / num_heads must be a multiple
                of 4 when ``rope`` is on.
            mlp_ratio (float): SwiGLU hidden channels = int(embed_dim * mlp_ratio) (EVA-02: 4*2/3).
            qkv_bias (bool): learn q and v biases.
            drop_path_rate (float): stochastic depth rate of the last block (linear from 0).
            norm_layer (callable): normalization layer.
            act_layer (callable): SwiGLU gate activation. Default SiLU, which the official code
                always uses (it accepts ``act_layer`` but ignores it).
            use_abs_pos (bool): add the (resized) absolute position embedding ``pos_embed``.
            use_rel_pos (bool): must be False: EVA-02 has no relative position bias. (The official
                ViTDet base config sets it to True and the official EVA-02 ViT ignores it.)
            rope (bool): apply 2-D rotary embedding to queries and keys (the official code always
                does).
            pt_hw_seq_len (int): side of the pretraining token grid RoPE positions are scaled to.
            intp_freq (bool): scale RoPE positions of an n-token axis as arange(n) / n *
                pt_hw_seq_len; if False use arange(n).
            window_size (int): window of the windowed blocks.
            window_block_indexes (Sequence[int]): blocks using window attention; the others are
                global.
            residual_block_indexes (Sequence[int]): blocks followed by a conv bottleneck block.
            use_act_checkpoint (bool): recompute each block in the backward pass
                (``torch.utils.checkpoint``) when training with autograd on (never in eval);
                parameter names do not change.
            act_checkpoint_every (int): with ``use_act_checkpoint``, checkpoint only blocks whose
                index is a multiple of this (1 = every block).
            pretrain_img_size (int): input size of pretraining, defines the ``pos_embed`` grid.
            pretrain_use_cls_token (bool): ``pos_embed`` has a leading cls-token slot.
            out_feature (str): name of the output feature.
            xattn (bool): official switch for the xformers kernel. Without ``attn_impl`` it selects
                "sdpa" (True) or "plain" (False); the numbers are the same.
            attn_impl (str or None): "auto", "sdpa", "blocked" or "plain" (see :class:`Attention`);
                overrides ``xattn``.
            subln (bool): SwiGLU sub-LayerNorm ``mlp.ffn_ln`` in every block, as EVA-02 B/L
                (default). EVA-02 Ti/S (timm ``eva02_tiny`` / ``eva02_small``) have none: set
                False for their converted weights (``tools/convert_pretrained.py`` says which).
                A state dict of the other layout is refused when loaded.
        """
        if use_rel_pos:
            raise ValueError(
                "EVA02ViT has no relative position bias: set use_rel_pos=False (EVA-02 uses "
                "rotary embeddings; the official ViT silently ignored use_rel_pos=True inherited "
                "from the ViTDet base config)."
            )
        if attn_impl is None:
            attn_impl = "sdpa" if xattn else "plain"
        check_attn_impl(attn_impl)
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
        head_dim = embed_dim // num_heads
        self.subln = subln
        self._rope_check_args = (pt_hw_seq_len, intp_freq, head_dim)

        # One table provider for all blocks: windowed blocks ask for (ws, ws), global blocks for
        # the whole token grid.
        self.rope = (
            VisionRotaryEmbedding2D(head_dim, pt_seq_len=pt_hw_seq_len, intp_freq=intp_freq)
            if rope
            else None
        )
        make_block = partial(
            Block,
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            act_layer=act_layer,
            rope=self.rope,
            attn_impl=attn_impl,
            subln=subln,
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

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._drop_official_rope_buffers(state_dict, prefix)
        self._check_subln_layout(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_subln_layout(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> None:
        """Raise InputError if ``state_dict``'s MLPs have (or lack) the sub-LN this model lacks
        (or has): loading would leave ``ffn_ln`` at its init or drop trained tensors, i.e.
        compute another function. Checked on the blocks the state dict has MLPs for.
        """
        blocks = [
            k for k in state_dict if k.startswith(prefix) and _MLP_OUT_KEY.match(k[len(prefix) :])
        ]
        if not blocks:
            return
        with_ln = [k for k in blocks if k.replace(".w3.weight", ".ffn_ln.weight") in state_dict]
        if len(with_ln) not in (0, len(blocks)):
            raise InputError(
                f"State dict under '{prefix}': {len(with_ln)} of {len(blocks)} blocks have a "
                "SwiGLU sub-LN (mlp.ffn_ln) and the others not; EVA-02 files have it in all "
                "blocks (B/L) or none (Ti/S). The file is damaged or mixes two models."
            )
        has_ln = bool(with_ln)
        if has_ln != self.subln:
            layout = "B/L layout, with" if has_ln else "Ti/S layout, without"
            raise InputError(
                f"State dict under '{prefix}' has the EVA-02 {layout} the SwiGLU sub-LN "
                f"(mlp.ffn_ln), but the model was built with subln={self.subln}: set "
                f"model.backbone.net.subln={has_ln} (EVA02ViT(subln={has_ln})) to load it."
            )

    def _drop_official_rope_buffers(self, state_dict: Dict[str, torch.Tensor], prefix: str) -> None:
        """
        Remove the RoPE tables official checkpoints store as buffers (``rope_win.freqs_cos``,
        ``rope_glb.freqs_sin``, ``blocks.{i}.attn.rope.freqs_cos``, ...) from ``state_dict`` in
        place (``load_state_dict`` passes its own copy), and check each against
        :func:`rope_cos_sin` for the square grid its shape implies. Logs one summary line.

        Args:
            state_dict (dict[str, Tensor]): state dict being loaded.
            prefix (str): this module's prefix in it, e.g. "backbone.net.".
        """
        keys = [
            k
            for k in state_dict
            if k.startswith(prefix) and _OFFICIAL_ROPE_KEY.match(k[len(prefix) :])
        ]
        if not keys:
            return
        pt_seq_len, intp_freq, head_dim = self._rope_check_args
        expected: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor]] = {}
        grids, bad = set(), []
        for k in keys:
            buf = state_dict.pop(k)
            n = math.isqrt(buf.shape[0]) if buf.ndim == 2 else -1
            if n < 0 or n * n != buf.shape[0] or buf.shape[1] != head_dim:
                bad.append(k)
                continue
            grids.add(n)
            if (n, head_dim) not in expected:
                expected[(n, head_dim)] = rope_cos_sin(
                    n, n, head_dim, pt_seq_len, intp_freq=intp_freq
                )
            ref = expected[(n, head_dim)][0 if k.endswith("cos") else 1]
            atol = max(1e-5, 2 * torch.finfo(buf.dtype).eps) if buf.is_floating_point() else 0
            if not torch.allclose(buf.detach().float().cpu(), ref, atol=atol, rtol=0):
                bad.append(k)
        where = f" under '{prefix}'" if prefix else ""
        if bad:
            logger.warning(
                "Dropped %d RoPE buffers%s; %d of them (e.g. %s) differ from the tables EVA02ViT "
                "computes (head_dim=%d, pt_hw_seq_len=%d, intp_freq=%s): the checkpoint was "
                "trained with another rotary embedding or head size.",
                len(keys),
                where,
                len(bad),
                bad[0],
                head_dim,
                pt_seq_len,
                intp_freq,
            )
        else:
            logger.info(
                "Dropped %d RoPE buffers%s (token grids %s); they match the tables EVA02ViT "
                "recomputes from the token grid at run time.",
                len(keys),
                where,
                sorted(grids),
            )
