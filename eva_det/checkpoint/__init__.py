"""Checkpoint utilities: converting pretrained EVA / EVA-02 backbones to eva_det's names."""

from .convert import FORMATS, convert_file, convert_pretrained, detect_format, unwrap_state_dict
from .convert_common import ConversionResult
from .convert_eva01 import convert_eva01
from .convert_eva02 import convert_eva02, convert_timm_eva02, eva02_model_settings, eva02_to_timm

__all__ = [
    "FORMATS",
    "ConversionResult",
    "convert_eva01",
    "convert_eva02",
    "convert_file",
    "convert_pretrained",
    "convert_timm_eva02",
    "detect_format",
    "eva02_model_settings",
    "eva02_to_timm",
    "unwrap_state_dict",
]
