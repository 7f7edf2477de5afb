"""The input selection LVIS-api makes before scoring, done up front for faster-coco-eval.

LVIS-api (``lvis`` package) reads ground truth and detections through ``LVIS.get_ann_ids``, which
keeps only annotations with ``0 < area < inf``; faster-coco-eval keeps every annotation. A
detection whose area is 0 (an empty mask for "segm", a box of zero width or height for "bbox") is
therefore ignored by LVIS-api but counted as a false positive by faster-coco-eval. The area is
LVIS-api's: ``w * h`` of the box for "bbox" results, the mask area for "segm" results (whose
"bbox" the evaluator removes), the stored "area" field for the ground truth.

LVIS-api then drops every detection of a category that is neither annotated in its image nor in
the image's ``neg_category_ids`` (federated evaluation). faster-coco-eval 1.8 does the same, but
its segm path crashes (``IndexError: unordered_map::at``) on an image without ground truth that
has such detections; dropping them here first gives LVIS-api's numbers and avoids the crash.
"""

import logging
import math
from collections import defaultdict
from typing import Any, Dict, List, Set

import pycocotools.mask as mask_util

__all__ = ["lvis_result_area", "positive_area", "drop_unknown_categories", "ground_truth_in_use"]

logger = logging.getLogger(__name__)


def lvis_result_area(result: Dict[str, Any], iou_type: str) -> float:
    """LVIS-api's area of one result: box ``w * h`` for "bbox", mask area for "segm".

    Args:
        result (dict): COCO-format result; "bbox" as (x, y, w, h), "segmentation" as RLE.
        iou_type (str): "bbox" or "segm".
    """
    if iou_type == "bbox":
        _, _, w, h = result["bbox"]
        return float(w) * float(h)
    return float(mask_util.area(result["segmentation"]))


def _area_ok(area: float) -> bool:
    """LVIS-api's ``get_ann_ids`` condition ``0 < area < inf`` (NaN fails it)."""
    return 0.0 < area < math.inf


def positive_area(results: List[Dict[str, Any]], iou_type: str) -> List[Dict[str, Any]]:
    """The results LVIS-api scores: those with ``0 < area < inf`` (see the module docstring).

    Args:
        results (list[dict]): COCO-format results, after the per-image cap.
        iou_type (str): "bbox" or "segm".

    Returns:
        list[dict]: the kept results (same dict objects, same order).
    """
    if iou_type == "segm":
        # one call for all masks (pycocotools' list version fails beyond 255 masks on numpy 2)
        from faster_coco_eval.core import mask as fast_mask

        rles = [r["segmentation"] for r in results]
        areas = fast_mask.area(rles).tolist() if rles else []
    else:
        areas = [lvis_result_area(r, iou_type) for r in results]
    kept = [r for r, a in zip(results, areas) if _area_ok(a)]
    if len(kept) < len(results):
        logger.info(
            f"Ignoring {len(results) - len(kept)} {iou_type} detections of zero area, as LVIS-api."
        )
    return kept


def ground_truth_in_use(dataset: Dict[str, Any]) -> Dict[str, Any]:
    """``dataset`` itself, or a shallow copy without the annotations LVIS-api ignores (area 0).

    Args:
        dataset (dict): LVIS-format ground truth ("images", "annotations", "categories").
    """
    anns = dataset.get("annotations", [])
    kept = [a for a in anns if _area_ok(float(a["area"]))]
    if len(kept) == len(anns):
        return dataset
    logger.warning(
        f"Ignoring {len(anns) - len(kept)} ground-truth annotations whose 'area' is not > 0, "
        "as LVIS-api does."
    )
    return dict(dataset, annotations=kept)


def drop_unknown_categories(
    dataset: Dict[str, Any], results: List[Dict[str, Any]]
) -> List[Dict[str, Any]]:
    """Drop detections of categories neither annotated in their image nor negative for it.

    Args:
        dataset (dict): LVIS-format ground truth as scored (see :func:`ground_truth_in_use`);
            images carry ``neg_category_ids``.
        results (list[dict]): COCO-format results with "image_id" and "category_id".

    Returns:
        list[dict]: the kept results (same dict objects, same order).
    """
    known: Dict[Any, Set[int]] = defaultdict(set)
    for img in dataset["images"]:
        known[img["id"]].update(img.get("neg_category_ids", ()))
    for ann in dataset.get("annotations", []):
        known[ann["image_id"]].add(ann["category_id"])
    return [r for r in results if r["category_id"] in known[r["image_id"]]]
