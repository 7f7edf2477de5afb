"""eva_det models: backbones and ROI heads."""

from .backbone import EVAViT, LayerNormWithForceFP32
from .poolers import FastROIPooler

__all__ = ["EVAViT", "FastROIPooler", "LayerNormWithForceFP32"]
