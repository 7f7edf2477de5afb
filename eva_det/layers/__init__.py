"""Layers used by eva_det's backbones, heads and inference."""

from .blocked_attention import blocked_rel_pos_attention
from .rel_pos_attention import (
    ATTN_IMPLS,
    plain_rel_pos_attention,
    rel_pos_attention,
    sdpa_rel_pos_attention,
)
from .roi_align import ROIAlign  # the function: eva_det.layers.roi_align.roi_align
from .soft_nms import batched_soft_nms

__all__ = [
    "ATTN_IMPLS",
    "ROIAlign",
    "batched_soft_nms",
    "blocked_rel_pos_attention",
    "plain_rel_pos_attention",
    "rel_pos_attention",
    "sdpa_rel_pos_attention",
]
