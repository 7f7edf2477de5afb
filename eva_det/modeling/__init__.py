"""eva_det models: backbones and ROI heads."""

from .backbone import EVAViT, LayerNormWithForceFP32

__all__ = ["EVAViT", "LayerNormWithForceFP32"]
