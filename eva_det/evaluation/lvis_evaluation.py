"""LVIS evaluation on faster-coco-eval, without the ``lvis`` package.

detectron2's ``LVISEvaluator`` needs the ``lvis`` package (``lvis.LVIS`` to read the ground
truth, ``LVISEval`` to score), whose ``accumulate`` crashes on numpy >= 1.24 (``np.float``).
:class:`LVISEvaluator` keeps detectron2's class (``process``, ``evaluate``, proposal recall) and
replaces both uses:

* the ground truth is read with ``faster_coco_eval.COCO``, which offers the ``get_ann_ids`` /
  ``load_anns`` calls detectron2's proposal evaluation makes on ``lvis.LVIS``;
* scoring runs faster-coco-eval's ``COCOeval_faster(lvis_style=True)``, which follows LVIS-api's
  protocol: federated evaluation (an image's detections of a category that is neither annotated
  in it nor listed in its ``neg_category_ids`` are dropped), unmatched detections of the image's
  ``not_exhaustive_category_ids`` ignored, no crowd regions, a single ``maxDets`` and AP per
  category frequency (APr / APc / APf over the categories' ``frequency`` r / c / f).

What LVIS-api does in ``LVISResults`` and faster-coco-eval does not, :func:`limit_dets_per_image`
does here: keep the ``max_dets_per_image`` (default 300) best-scored detections of every image,
over all categories; and :mod:`.lvis_inputs` makes LVIS-api's input selection (zero-area
detections and annotations ignored, detections of unknown categories dropped before
faster-coco-eval sees them). With that, the numbers equal LVIS-api's on every input, including
images without ground truth (see ``tests/evaluation/test_evaluation.py``).
Metrics that cannot be computed (e.g. APr when no rare category has ground truth) are NaN, as in
detectron2's COCO evaluator, where detectron2's LVIS evaluator would report -100.
"""

import copy
import itertools
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import LVISEvaluator as _D2LVISEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from eva_det.utils.atomic import atomic_write_json
from eva_det.utils.categories import class_to_category_ids

from .coco_evaluation import (
    coco_api_for_backend,
    gather_predictions,
    save_predictions,
)
from .coco_json import prediction_from_output
from .lvis_inputs import drop_unknown_categories, ground_truth_in_use, positive_area

__all__ = ["LVISEvaluator", "evaluate_predictions_on_lvis", "limit_dets_per_image"]

logger = logging.getLogger(__name__)

LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# detectron2 / LVIS-api metric name -> key of faster-coco-eval's ``stats_as_dict``
_STATS_KEYS = {
    "AP": "AP_all",
    "AP50": "AP_50",
    "AP75": "AP_75",
    "APs": "AP_small",
    "APm": "AP_medium",
    "APl": "AP_large",
    "APr": "APr",
    "APc": "APc",
    "APf": "APf",
}


def limit_dets_per_image(results: List[Dict[str, Any]], max_dets: int) -> List[Dict[str, Any]]:
    """Keep the ``max_dets`` highest-scored results of each image, as LVIS-api's ``LVISResults``.

    Ties keep their input order (stable sort); the output is grouped by image in order of first
    appearance, like LVIS-api's, so detection ids and tie-breaking match it too.

    Args:
        results (list[dict]): COCO-format results with "image_id" and "score".
        max_dets (int): per-image limit; negative = no limit.

    Returns:
        list[dict]: the kept results (the same dict objects).
    """
    per_image: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    kept = []
    for anns in per_image.values():
        if 0 <= max_dets < len(anns):
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        kept.extend(anns)
    return kept


def check_lvis_categories(lvis_gt, json_file: str = "the LVIS ground truth") -> None:
    """Raise ValueError unless every category has an LVIS ``frequency`` of "r", "c" or "f"."""
    bad = [
        (c["id"], c.get("frequency"))
        for c in lvis_gt.dataset.get("categories", [])
        if c.get("frequency") not in ("r", "c", "f")
    ]
    if bad:
        raise ValueError(
            f"{json_file}: LVIS evaluation needs a 'frequency' of 'r', 'c' or 'f' for every "
            f"category (for APr / APc / APf); (id, frequency) of the first offending ones: "
            f"{bad[:5]}. Use COCOEvaluator for datasets without LVIS frequencies."
        )


def evaluate_predictions_on_lvis(
    lvis_gt,
    lvis_results: List[Dict[str, Any]],
    iou_type: str,
    max_dets_per_image: Optional[int] = None,
) -> Dict[str, float]:
    """Score LVIS-format results with LVIS-api's protocol, on faster-coco-eval.

    Args:
        lvis_gt: ground truth (``faster_coco_eval.COCO``, or anything
            :func:`coco_api_for_backend` converts) with LVIS fields: categories' ``frequency``,
            images' ``neg_category_ids`` / ``not_exhaustive_category_ids``.
        lvis_results (list[dict]): COCO-format results with dataset category ids. Not modified.
        iou_type (str): "bbox" or "segm".
        max_dets_per_image (int or None): detections kept per image; None = LVIS's 300.

    Returns:
        dict[str, float]: AP, AP50, AP75, APs, APm, APl, APr, APc, APf in percent (NaN when a
        metric cannot be computed).
    """
    from faster_coco_eval import COCOeval_faster

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"LVIS evaluation supports iou_type bbox or segm, got {iou_type!r}.")
    if not lvis_results:
        logger.warning("No predictions from the model!")
        return {metric: float("nan") for metric in LVIS_METRICS}
    if max_dets_per_image is None:
        max_dets_per_image = 300  # LVIS's default
    if max_dets_per_image < 1:
        raise ValueError(f"max_dets_per_image must be a positive int, got {max_dets_per_image}.")

    # Evaluation adds keys (id, area, ...) to every result dict: work on copies.
    results = [dict(r) for r in limit_dets_per_image(lvis_results, max_dets_per_image)]
    if iou_type == "segm":
        # With a "bbox" the api takes the box area as the instance area; drop it so mask AP uses
        # the mask area for the small / medium / large split (as detectron2 does).
        for r in results:
            r.pop("bbox", None)

    logger.info(f"Evaluating {iou_type} with max detections per image = {max_dets_per_image}")
    lvis_gt = coco_api_for_backend(lvis_gt, "faster_coco_eval")
    # LVIS-api's input selection (zero-area annotations, federated rule): see lvis_inputs.
    dataset = ground_truth_in_use(lvis_gt.dataset)
    if dataset is not lvis_gt.dataset:
        lvis_gt = coco_api_for_backend(dataset, "faster_coco_eval")
    results = drop_unknown_categories(dataset, positive_area(results, iou_type))
    lvis_dt = lvis_gt.loadRes(results)
    lvis_eval = COCOeval_faster(lvis_gt, lvis_dt, iou_type, lvis_style=True)
    lvis_eval.params.maxDets = [max_dets_per_image]
    lvis_eval.run()

    stats = lvis_eval.stats_as_dict
    metrics = {
        name: float(stats[key] * 100) if stats[key] >= 0 else float("nan")
        for name, key in _STATS_KEYS.items()
    }
    logger.info(f"Evaluation results for {iou_type}: \n" + create_small_table(metrics))
    return metrics


class LVISEvaluator(_D2LVISEvaluator):
    """detectron2's ``LVISEvaluator`` without the ``lvis`` package; see the module docstring.

    ``process`` also takes masks already RLE-encoded (``pred_masks_rle``), as COCOEvaluator.
    """

    accepts_rle_masks = True  # eva_det.evaluation.inference may pass pred_masks_rle

    def process(self, inputs, outputs):
        """detectron2's ``process`` with :func:`.coco_json.instances_to_coco_json`."""
        for inp, out in zip(inputs, outputs):
            prediction = prediction_from_output(inp, out, self._cpu_device)
            self._predictions.append(prediction)

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
    ):
        """
        Args:
            dataset_name (str): registered dataset whose metadata has "json_file", the path to
                the LVIS-format annotation.
            tasks (tuple[str] or None): any of "bbox", "segm"; None = inferred from the
                predictions.
            distributed (bool): gather predictions from all ranks and score on the main one.
            output_dir (str or None): where to write ``instances_predictions.pth`` and
                ``lvis_instances_results.json``.
            max_dets_per_image (int or None): detections per image counted by AP; None = 300.
        """
        # Not calling detectron2's __init__: it imports the lvis package to read the json.
        from faster_coco_eval import COCO

        self._logger = logging.getLogger(__name__)
        if tasks is not None and isinstance(tasks, CfgNode):
            self._logger.warning(
                "LVISEvaluator instantiated using config, this is deprecated behavior."
                " Please pass in explicit arguments instead."
            )
            self._tasks = None  # inferred from the predictions
        else:
            self._tasks = tasks
        self._distributed = distributed
        self._output_dir = output_dir
        self._max_dets_per_image = max_dets_per_image
        self._cpu_device = torch.device("cpu")

        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise ValueError(
                f"Dataset {dataset_name!r} has no 'json_file' in its metadata; LVISEvaluator "
                "reads the LVIS-format annotation from it."
            )
        json_file = PathManager.get_local_path(self._metadata.json_file)
        self._lvis_api = COCO(json_file)
        # Test set json files do not contain annotations (evaluation must be performed using
        # the LVIS evaluation server).
        self._do_evaluation = len(self._lvis_api.dataset.get("annotations", [])) > 0
        if self._do_evaluation:
            check_lvis_categories(self._lvis_api, json_file)

    def evaluate(self):
        """detectron2's ``evaluate`` with the outputs written atomically (``save_predictions``)."""
        predictions = gather_predictions(self)
        if predictions is None:
            return None
        if len(predictions) == 0:
            self._logger.warning("[LVISEvaluator] Did not receive valid predictions.")
            return {}
        save_predictions(self._output_dir, predictions, "lvis_instances_results.json")
        self._results = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            self._eval_predictions(predictions)
        return copy.deepcopy(self._results)

    def _eval_predictions(self, predictions):
        """Write the results json and fill ``self._results`` with the metrics of each task."""
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)

        # The LVIS evaluator can score COCO-category datasets: those carry detectron2's mapping.
        # LVIS category ids are the contiguous ids + 1
        mapping = class_to_category_ids(self._metadata, lvis_fallback=False)
        for result in lvis_results:
            c = result["category_id"]
            result["category_id"] = mapping[c] if mapping is not None else c + 1

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "lvis_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            atomic_write_json(lvis_results, file_path)

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info("Evaluating predictions ...")
        for task in sorted(tasks):
            self._results[task] = evaluate_predictions_on_lvis(
                self._lvis_api, lvis_results, task, max_dets_per_image=self._max_dets_per_image
            )
