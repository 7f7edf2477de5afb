"""COCO evaluation that runs on current numpy / Python without detectron2's compiled ``_C``.

:class:`COCOEvaluator` is detectron2's ``COCOEvaluator`` with one change: the scoring step goes
through faster-coco-eval's ``COCOeval_faster`` (default) or pycocotools' ``COCOeval``
(``backend="pycocotools"``), never through detectron2's C++ ``COCOeval_opt``, which needs
``detectron2._C``. Both backends give the same numbers (faster-coco-eval reimplements the
pycocotools protocol in C++), so the returned table matches detectron2's format and values:
``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>", ...}, "segm": {...}}``.

Other differences from detectron2, all in :meth:`COCOEvaluator._eval_predictions`:

* ``coco_instances_results.json`` is written atomically (temporary file + ``os.replace``), so an
  interrupted run never leaves a truncated file that looks complete;
* each task scores a shallow copy of the results, so the bbox pass cannot leave keys (``area``,
  ``id``, polygons) behind for the segm pass and no deep copy of the masks is needed;
* ``instances_predictions.pth`` is written atomically too, after the previous run's results json
  is deleted (:func:`save_predictions`), so an output folder never pairs the predictions of one
  run with the results of another, even when a re-run is interrupted.
"""

import contextlib
import copy
import io
import itertools
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
from detectron2.utils import comm

from eva_det.utils.atomic import atomic_torch_save, atomic_write_json
from eva_det.utils.categories import class_to_category_ids

from .coco_json import prediction_from_output

__all__ = [
    "BACKENDS",
    "COCOEvaluator",
    "coco_api_for_backend",
    "evaluate_predictions_on_coco",
]

logger = logging.getLogger(__name__)

BACKENDS = ("faster_coco_eval", "pycocotools")


def gather_predictions(evaluator) -> Optional[list]:
    """All ranks' ``evaluator._predictions`` on the main process (None on the others)."""
    if not evaluator._distributed:
        return evaluator._predictions
    comm.synchronize()
    predictions = comm.gather(evaluator._predictions, dst=0)
    return list(itertools.chain(*predictions)) if comm.is_main_process() else None


def save_predictions(output_dir: Optional[str], predictions: list, results_name: str) -> None:
    """Replace a previous run's outputs in ``output_dir`` by this run's predictions.

    Deletes ``results_name`` (the results json the evaluator writes next) first, then writes
    ``instances_predictions.pth`` atomically, so the folder never holds one run's predictions
    with another run's results.

    Args:
        output_dir (str or None): the evaluator's output folder; None = write nothing.
        predictions (list[dict]): gathered per-image predictions.
        results_name (str): e.g. "coco_instances_results.json".
    """
    if not output_dir:
        return
    stale = os.path.join(output_dir, results_name)
    if os.path.exists(stale):
        os.remove(stale)
    atomic_torch_save(predictions, os.path.join(output_dir, "instances_predictions.pth"))


def _log_stdout(text: str) -> None:
    """Log what pycocotools printed, one record per run."""
    text = text.strip()
    if text:
        logger.info(text)


def coco_api_for_backend(coco_gt, backend: str):
    """Return ``coco_gt`` as the COCO api class of ``backend``, re-indexing (not re-reading) it.

    Args:
        coco_gt: a ``faster_coco_eval.COCO``, a ``pycocotools.coco.COCO`` or a COCO-format dict.
            The annotation dicts are shared, not copied.
        backend (str): "faster_coco_eval" or "pycocotools".
    """
    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO

        return coco_gt if isinstance(coco_gt, COCO) else COCO(dataset)
    from pycocotools.coco import COCO

    if isinstance(coco_gt, COCO):
        return coco_gt
    api = COCO()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def evaluate_predictions_on_coco(
    coco_gt,
    coco_results: List[Dict[str, Any]],
    iou_type: str,
    *,
    backend: str = "faster_coco_eval",
    kpt_oks_sigmas: Sequence[float] = (),
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
):
    """Score COCO-format results; the counterpart of detectron2's ``_evaluate_predictions_on_coco``.

    Args:
        coco_gt: ground truth as a ``faster_coco_eval.COCO``, ``pycocotools.coco.COCO`` or
            COCO-format dict (converted with :func:`coco_api_for_backend` when needed).
        coco_results (list[dict]): detections in COCO results format, with dataset category ids.
            Not modified.
        iou_type (str): "bbox", "segm" or "keypoints".
        backend (str): "faster_coco_eval" or "pycocotools".
        kpt_oks_sigmas (Sequence[float]): keypoint OKS sigmas; empty = COCO's defaults.
        img_ids (Sequence[int] or None): evaluate only these images; None = all.
        max_dets_per_image (Sequence[int] or None): COCOeval ``maxDets``, 3 entries; None =
            COCO's [1, 10, 100]. Both backends sort it and AP counts the largest entry, so
            detectron2's [1, 10, limit] with a limit below 10 scores AP at 10 detections.
            Ignored for keypoints (COCO uses 20).

    Returns:
        the evaluator after ``evaluate``, ``accumulate`` and ``summarize``: ``.stats`` holds the
        summary in pycocotools' order and ``.eval["precision"]`` the (T, R, K, A, M) table.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}.")
    if not coco_results:
        raise ValueError("coco_results is empty; there is nothing to evaluate.")
    if max_dets_per_image is None:
        max_dets_per_image = [1, 10, 100]
    if len(max_dets_per_image) != 3:
        raise ValueError(
            f"max_dets_per_image={list(max_dets_per_image)} needs 3 entries "
            "(COCOeval's maxDets, e.g. [1, 10, 100])."
        )
    max_dets = [int(m) for m in max_dets_per_image]

    # Evaluation adds keys (id, area, iscrowd, ...) to every result dict: work on copies.
    results = [dict(r) for r in coco_results]
    if iou_type == "segm":
        # With a "bbox" the COCO api takes the box area as the instance area; drop it so mask AP
        # uses the mask area for the small / medium / large split (as detectron2 does).
        for r in results:
            r.pop("bbox", None)

    coco_gt = coco_api_for_backend(coco_gt, backend)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        coco_dt = coco_gt.loadRes(results)
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            coco_eval = COCOeval_faster(
                coco_gt, coco_dt, iou_type, kpt_oks_sigmas=list(kpt_oks_sigmas) or None
            )
        else:
            from pycocotools.cocoeval import COCOeval

            coco_eval = (COCOeval if max_dets[2] == 100 else COCOevalMaxDets)(
                coco_gt, coco_dt, iou_type
            )
            if kpt_oks_sigmas:
                coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas)
    _log_stdout(stdout.getvalue())

    if iou_type != "keypoints":
        coco_eval.params.maxDets = max_dets
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    if iou_type == "keypoints":
        num_dt = len(results[0]["keypoints"]) // 3
        num_gt = len(next(iter(coco_gt.anns.values()))["keypoints"]) // 3
        num_oks = len(coco_eval.params.kpt_oks_sigmas)
        if not num_oks == num_dt == num_gt:
            raise ValueError(
                f"Predictions have {num_dt} keypoints, the ground truth {num_gt} and "
                f"kpt_oks_sigmas {num_oks}; they have to agree "
                "(see http://cocodataset.org/#keypoints-eval)."
            )

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    _log_stdout(stdout.getvalue())
    return coco_eval


class COCOEvaluator(_D2COCOEvaluator):
    """detectron2's ``COCOEvaluator`` scored with faster-coco-eval or pycocotools.

    Same constructor, inputs and outputs as detectron2's class; see the module docstring.
    ``process`` also takes masks already RLE-encoded (``pred_masks_rle``, from
    ``eva_det.modeling.postprocess``), which spares encoding full-image masks one by one.
    """

    accepts_rle_masks = True  # eva_det.evaluation.inference may pass pred_masks_rle

    def process(self, inputs, outputs):
        """detectron2's ``process`` with :func:`.coco_json.instances_to_coco_json`."""
        for inp, out in zip(inputs, outputs):
            prediction = prediction_from_output(inp, out, self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
        backend: str = "faster_coco_eval",
    ):
        """
        Args:
            dataset_name (str): registered dataset with a "json_file" in its metadata, or in
                detectron2's standard format (then converted to COCO json in ``output_dir``).
            tasks (tuple[str] or None): any of "bbox", "segm", "keypoints"; None = inferred
                from the predictions.
            distributed (bool): gather predictions from all ranks and score on the main one.
            output_dir (str or None): where to write ``instances_predictions.pth`` and
                ``coco_instances_results.json``.
            max_dets_per_image (int or None): detections per image (and category) counted by
                AP; None = COCO's 100. As in detectron2, values below 10 count 10.
            use_fast_impl (bool): accepted for compatibility and ignored: detectron2's C++
                ``COCOeval_opt`` is never used; ``backend`` picks the implementation.
            kpt_oks_sigmas (Sequence[float]): keypoint OKS sigmas; empty = COCO's defaults.
            allow_cached_coco (bool): reuse a COCO json converted by an earlier run.
            backend (str): "faster_coco_eval" (default, several times faster) or
                "pycocotools" (the official implementation); both give the same numbers.
        """
        if backend not in BACKENDS:
            raise ValueError(
                f"Unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}."
            )
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,  # keeps detectron2 from logging about its missing C++ eval
            kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        self._backend = backend
        # detectron2 loaded the json with pycocotools; re-index the same dicts for the backend.
        self._coco_api = coco_api_for_backend(self._coco_api, backend)

    def _unmap_category_ids(self, coco_results: List[Dict[str, Any]]) -> None:
        """Replace contiguous class ids (model outputs) by dataset category ids, in place."""
        reverse_mapping = class_to_category_ids(self._metadata, lvis_fallback=False)
        if reverse_mapping is None:
            return
        num_classes = len(reverse_mapping)
        for result in coco_results:
            category_id = result["category_id"]
            if not 0 <= category_id < num_classes:
                raise ValueError(
                    f"A prediction has class={category_id}, but {self._metadata.name!r} has "
                    f"{num_classes} classes: predicted ids must be in [0, {num_classes - 1}]."
                )
            result["category_id"] = reverse_mapping[category_id]

    def evaluate(self, img_ids=None):
        """detectron2's ``evaluate`` with the outputs written by :func:`save_predictions`."""
        predictions = gather_predictions(self)
        if predictions is None:
            return {}
        if len(predictions) == 0:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        save_predictions(self._output_dir, predictions, "coco_instances_results.json")
        self._results = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _eval_predictions(self, predictions, img_ids=None):
        """Write the results json and fill ``self._results`` with the metrics of each task."""
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._unmap_category_ids(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            atomic_write_json(coco_results, file_path)

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info(f"Evaluating predictions with {self._backend} ...")
        for task in sorted(tasks):
            if task not in {"bbox", "segm", "keypoints"}:
                raise ValueError(f"Unknown COCO task {task!r}; use bbox, segm or keypoints.")
            coco_eval = (
                evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    backend=self._backend,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if len(coco_results) > 0
                else None  # the COCO api does not handle empty results well
            )
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
