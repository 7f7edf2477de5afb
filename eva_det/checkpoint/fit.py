"""Whether a loaded checkpoint fits the model: strict for evaluation, backbone-strict for training.

detectron2 loads whatever matches and only warns about the rest, so a checkpoint of another
model size, with renamed keys or for another config gives a partly random model and AP ~0
without an error. :func:`check_fit` turns a :class:`~.checkpointer.LoadReport` into one
:class:`~eva_det.errors.InputError` listing the problems (the first few of each kind and their
counts) and what to do:

* ``"eval"`` (``--eval-only``, demo, test-dev submission, model zoo) and ``"resume"``: every
  model tensor must come from the checkpoint, with its shape, and the checkpoint must hold no
  tensor the model lacks;
* ``"train"`` (``train.init_checkpoint`` at the start of training): the pretrained backbone
  (``backbone.net.*``) must load completely; everything else may be partial (``eva_o365.pth``
  has 366 class rows and no mask head for COCO; a MIM backbone has no pyramid or heads) and is
  named in the load report.

Known-benign differences are handled by name: the federated-loss class weights
(``*.fed_loss_cls_weights``) are recomputed from the dataset when the model is built and do not
affect inference; EVA-02's RoPE tables are dropped (and checked) by ``EVA02ViT`` itself before
the report is made; detectron2 already ignores ``pixel_mean`` / ``pixel_std`` and anchors.

``train.allow_checkpoint_mismatch=True`` turns the error into a warning (``allow_mismatch``).
"""

import logging
import re
from collections import Counter
from typing import Iterable, List

from eva_det.errors import InputError

__all__ = ["ALLOW_MISMATCH_KEY", "BACKBONE_PREFIX", "check_fit", "fit_problems", "module_groups"]

logger = logging.getLogger(__name__)

ALLOW_MISMATCH_KEY = "train.allow_checkpoint_mismatch"
#: Tensors of the pretrained ViT; a training init checkpoint must provide all of them.
BACKBONE_PREFIX = "backbone.net."
#: Tensors whose absence / presence / shape never matters (see the module docstring).
_BENIGN = re.compile(r"(^|\.)fed_loss_cls_weights$")
_SHOWN = 5  # names listed per kind of problem


def module_groups(keys: Iterable[str], depth: int = 2) -> str:
    """``"roi_heads.mask_head (10), ..."``: keys counted by their first ``depth`` name parts."""
    counts = Counter(".".join(k.split(".")[:depth]) for k in keys)
    return ", ".join(f"{name} ({n})" for name, n in counts.items())


def fit_problems(report, purpose: str):
    """The report's missing / other-shape / unexpected tensors that matter for ``purpose``.

    Args:
        report: a :class:`~.checkpointer.LoadReport`.
        purpose (str): "eval", "resume" or "train" (see the module docstring).

    Returns:
        tuple(list[str], list[tuple], list[str]): missing keys (without the other-shape ones),
        (key, checkpoint shape, model shape), unexpected keys.
    """
    if purpose not in ("eval", "resume", "train"):
        raise ValueError(f"purpose must be 'eval', 'resume' or 'train', got {purpose!r}")

    def counts(key: str) -> bool:
        if _BENIGN.search(key):
            return False
        return purpose != "train" or key.startswith(BACKBONE_PREFIX)

    shapes = [s for s in report.incorrect_shapes if counts(s[0])]
    shape_keys = {s[0] for s in report.incorrect_shapes}
    missing = [k for k in report.missing_keys if k not in shape_keys and counts(k)]
    unexpected = [k for k in report.unexpected_keys if counts(k)]
    return missing, shapes, unexpected


def _listed(items: List[str], what: str) -> str:
    more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"{len(items)} {what}: {', '.join(items[:_SHOWN])}{more}"


_ADVICE = {
    "eval": (
        "Use the checkpoint that belongs to this config (same model size, num_classes and "
        "recipe; see docs/MODEL_ZOO.md), or the config that matches the checkpoint. To "
        "evaluate the partly initialised model anyway, add {key}=True."
    ),
    "resume": (
        "--resume continues the run in train.output_dir, but its checkpoint was written by "
        "another model: resume with the config that wrote it, or use a new train.output_dir "
        "(or drop --resume). To load it anyway, add {key}=True."
    ),
    "train": (
        "train.init_checkpoint must hold the whole pretrained backbone ({prefix}*) of this "
        "model size: convert official EVA / EVA-02 pretrained files with "
        "tools/convert_pretrained.py (their keys are named otherwise) and pick the config of "
        "the same size. To train from a partial backbone anyway, add {key}=True."
    ),
}


def check_fit(report, path: str, purpose: str, *, allow_mismatch: bool = False) -> None:
    """Raise one InputError if the checkpoint ``path`` does not fit for ``purpose``.

    Args:
        report: the :class:`~.checkpointer.LoadReport` of loading ``path`` (None: nothing
            loaded, nothing checked).
        path (str): the checkpoint, for the message.
        purpose (str): "eval", "resume" or "train" (see the module docstring).
        allow_mismatch (bool): log the message as a warning instead of raising.
    """
    if report is None:
        return
    missing, shapes, unexpected = fit_problems(report, purpose)
    if not (missing or shapes or unexpected):
        return
    parts = []
    if missing:
        parts.append(_listed(missing, "model tensors missing from the checkpoint"))
    if shapes:
        shown = [f"{k} {tuple(a)} in the file vs {tuple(b)} in the model" for k, a, b in shapes]
        parts.append(_listed(shown, "tensors with other shapes"))
    if unexpected:
        parts.append(_listed(unexpected, "checkpoint tensors the model does not have"))
    scope = "the backbone of " if purpose == "train" else ""
    total = len(missing) + len(shapes) + len(unexpected)
    message = (
        f"Checkpoint {path} does not fit {scope}the model ({total} problems): "
        + "; ".join(parts)
        + ". "
        + _ADVICE[purpose].format(key=ALLOW_MISMATCH_KEY, prefix=BACKBONE_PREFIX)
    )
    if allow_mismatch:
        logger.warning("%s (%s=True: continuing.)", message, ALLOW_MISMATCH_KEY)
        return
    raise InputError(message)
