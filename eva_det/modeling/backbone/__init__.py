"""EVA backbones for detectron2."""

from .build import add_eva_vit_config, build_eva_vit_sfp_backbone
from .eva_vit import EVAViT
from .norm import LayerNormWithForceFP32

__all__ = [
    "EVAViT",
    "LayerNormWithForceFP32",
    "add_eva_vit_config",
    "build_eva_vit_sfp_backbone",
]
