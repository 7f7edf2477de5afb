"""Layers used by eva_det's heads and inference."""

from .soft_nms import batched_soft_nms, soft_nms_sequential_reference

__all__ = ["batched_soft_nms", "soft_nms_sequential_reference"]
