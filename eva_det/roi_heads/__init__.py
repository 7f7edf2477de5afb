"""ROI heads with EVA's inference additions (soft-NMS, score override, maskness)."""

from .cascade_rcnn import EVACascadeROIHeads
from .inference import SoftNMSParams, eva_fast_rcnn_inference
from .maskness import maskness_scores

__all__ = ["EVACascadeROIHeads", "SoftNMSParams", "eva_fast_rcnn_inference", "maskness_scores"]
