"""Layers used by eva_det's backbones, heads and inference."""

from .blocked_attention import blocked_rel_pos_attention
from .rel_pos_attention import (
    ATTN_IMPLS,
    plain_rel_pos_attention,
    rel_pos_attention,
    sdpa_rel_pos_attention,
)
from .soft_nms import batched_soft_nms, soft_nms_sequential_reference

__all__ = [
    "ATTN_IMPLS",
    "batched_soft_nms",
    "blocked_rel_pos_attention",
    "plain_rel_pos_attention",
    "rel_pos_attention",
    "sdpa_rel_pos_attention",
    "soft_nms_sequential_reference",
]
