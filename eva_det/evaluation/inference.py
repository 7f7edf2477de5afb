"""``inference_on_dataset`` with a progress bar (images/s, ETA) and batched mask pasting.

A drop-in for detectron2's ``detectron2.evaluation.inference_on_dataset``: same arguments, same
evaluator calls (``reset``, ``process`` per batch, ``evaluate``), same ``inference_context`` /
``torch.no_grad`` and callbacks, the same timing logs (every 5 s, and the final "Total inference
time" lines that scripts grep for) and the same return value. In addition:

* the main process shows a tqdm bar with images/s and ETA (``progress``);
* ``fast_postprocess=True`` (default) runs a detectron2 ``GeneralizedRCNN`` through
  :class:`eva_det.modeling.postprocess.FastRCNNPostprocess`: masks are pasted in batches
  instead of one by one, and when every evaluator declares ``accepts_rle_masks`` (eva_det's
  COCO and LVIS evaluators) they go straight to RLE (``pred_masks_rle``) without full-image
  masks. The evaluators' results are the same as with ``model(inputs)``; with EVA's thousands
  of detections per image, paste and encode are otherwise a large part of the time. Other
  models are called as they are. The mask encoding then counts as "Inference" time in the
  logs, not as "Eval" time.
"""

import datetime
import logging
import sys
import time
from collections import abc
from contextlib import ExitStack
from typing import Callable, Dict, List, Optional, Union

import torch
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.evaluation.evaluator import inference_context
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from eva_det.modeling.postprocess import FastRCNNPostprocess, supports_fast_postprocess

__all__ = ["inference_on_dataset"]

logger = logging.getLogger(__name__)

# Loggers whose console handlers are routed through tqdm while the bar is shown.
_CONSOLE_LOGGERS = ("", "detectron2", "eva_det", "fvcore")


def _num_images(inputs) -> int:
    return len(inputs) if isinstance(inputs, abc.Sized) else 1


def _accepts_rle_masks(evaluator: DatasetEvaluator) -> bool:
    """Whether every evaluator takes ``pred_masks_rle`` instead of (H, W) ``pred_masks``."""
    if isinstance(evaluator, DatasetEvaluators):
        return all(_accepts_rle_masks(e) for e in evaluator._evaluators)
    return bool(getattr(evaluator, "accepts_rle_masks", False))


def _expected_images(data_loader) -> int:
    """Images the loader will yield (batches x batch size for a torch DataLoader)."""
    batch_size = getattr(data_loader, "batch_size", None) or 1
    return len(data_loader) * batch_size


class _Timer:
    """detectron2's timing: data / compute / eval seconds, restarted after the warm-up batches."""

    def __init__(self, total: int):
        self.total = total
        self.num_warmup = min(5, total - 1)
        self.restart()

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.data = self.compute = self.eval = 0.0

    def iters_after_start(self, idx: int) -> int:
        return idx + 1 - self.num_warmup * int(idx >= self.num_warmup)

    def periodic_log(self, idx: int) -> None:
        n = self.iters_after_start(idx)
        compute = self.compute / n
        if idx < self.num_warmup * 2 and compute <= 5:
            return
        total = (time.perf_counter() - self.start) / n
        eta = datetime.timedelta(seconds=int(total * (self.total - idx - 1)))
        log_every_n_seconds(
            logging.INFO,
            f"Inference done {idx + 1}/{self.total}. Dataloading: {self.data / n:.4f} s/iter. "
            f"Inference: {compute:.4f} s/iter. Eval: {self.eval / n:.4f} s/iter. "
            f"Total: {total:.4f} s/iter. ETA={eta}",
            n=5,
            name=__name__,
        )

    def final_log(self) -> None:
        total_time = time.perf_counter() - self.start
        iters = max(self.total - self.num_warmup, 1)
        devices = comm.get_world_size()
        # NOTE: the same format as detectron2's, which scripts parse with grep
        logger.info(
            f"Total inference time: {datetime.timedelta(seconds=total_time)} "
            f"({total_time / iters:.6f} s / iter per device, on {devices} devices)"
        )
        logger.info(
            "Total inference pure compute time: "
            f"{datetime.timedelta(seconds=int(self.compute))} "
            f"({self.compute / iters:.6f} s / iter per device, on {devices} devices)"
        )


def inference_on_dataset(
    model,
    data_loader,
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
    callbacks: Optional[Dict[str, Callable[[], None]]] = None,
    *,
    progress: Optional[bool] = None,
    fast_postprocess: bool = True,
):
    """Run ``model`` over ``data_loader``, feed ``evaluator`` and return its results.

    Args:
        model (callable): takes one batch of ``data_loader``, returns the outputs that
            ``evaluator.process`` expects. An ``nn.Module`` is put in eval mode for the run.
        data_loader: iterable with a length (number of batches).
        evaluator (DatasetEvaluator, list of them, or None): None only benchmarks.
        callbacks (dict or None): functions called with no argument at "on_start",
            "before_inference", "after_inference" and "on_end", as in detectron2.
        progress (bool or None): show the tqdm bar; None = on the main process only.
        fast_postprocess (bool): for a detectron2 ``GeneralizedRCNN``, paste masks in
            batches, or encode them to RLE directly for evaluators with ``accepts_rle_masks``
            (identical results, see :mod:`eva_det.modeling.postprocess`); ignored for other models.

    Returns:
        dict: ``evaluator.evaluate()``, or {} when it returns None (e.g. off the main process).
    """
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    if isinstance(evaluator, abc.MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    callbacks = callbacks or {}
    total = len(data_loader)
    logger.info(f"Start inference on {total} batches")
    predict = model
    if fast_postprocess and supports_fast_postprocess(model):
        mask_format = "rle" if _accepts_rle_masks(evaluator) else "bitmask"
        predict = FastRCNNPostprocess(model, mask_format=mask_format)
    show = comm.is_main_process() if progress is None else progress
    evaluator.reset()

    timer = _Timer(total)
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        if show:
            loggers = [logging.getLogger(name) for name in _CONSOLE_LOGGERS]
            stack.enter_context(logging_redirect_tqdm(loggers=loggers))
        bar = stack.enter_context(
            tqdm(
                total=_expected_images(data_loader),
                desc="inference",
                unit="img",
                disable=not show,
                dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 30.0,
            )
        )
        callbacks.get("on_start", lambda: None)()
        start_data = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            timer.data += time.perf_counter() - start_data
            if idx == timer.num_warmup:
                timer.restart()

            start_compute = time.perf_counter()
            callbacks.get("before_inference", lambda: None)()
            outputs = predict(inputs)
            callbacks.get("after_inference", lambda: None)()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            timer.compute += time.perf_counter() - start_compute

            start_eval = time.perf_counter()
            evaluator.process(inputs, outputs)
            timer.eval += time.perf_counter() - start_eval

            bar.update(_num_images(inputs))
            timer.periodic_log(idx)
            start_data = time.perf_counter()
        callbacks.get("on_end", lambda: None)()
        if bar.n != bar.total:  # last batch smaller than the others
            bar.total = bar.n
            bar.refresh()

    timer.final_log()
    results = evaluator.evaluate()
    return {} if results is None else results
