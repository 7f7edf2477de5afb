"""COCO and LVIS evaluators that run on current numpy without detectron2's compiled ``_C``.

``COCOEvaluator`` and ``LVISEvaluator`` are drop-in subclasses of detectron2's evaluators; they
score with faster-coco-eval (or pycocotools for COCO) and write their results json atomically.
"""

from .coco_evaluation import (
    BACKENDS,
    COCOEvaluator,
    coco_api_for_backend,
    evaluate_predictions_on_coco,
)
from .lvis_evaluation import LVISEvaluator, evaluate_predictions_on_lvis, limit_dets_per_image

__all__ = [
    "BACKENDS",
    "COCOEvaluator",
    "LVISEvaluator",
    "coco_api_for_backend",
    "evaluate_predictions_on_coco",
    "evaluate_predictions_on_lvis",
    "limit_dets_per_image",
]
