"""The one builder of detectors for inference: :func:`build_inference_model`.

Everything that runs a trained model goes through it: ``--eval-only`` of
``tools/lazyconfig_train_net.py`` (:mod:`eva_det.engine.launch`), ``tools/test_dev_submission.py``
(:mod:`eva_det.submission`), ``tools/demo.py`` (:class:`eva_det.demo.LazyPredictor`),
:func:`eva_det.model_zoo.get` / :func:`~eva_det.model_zoo.get_inference_model` and
``bench/amp_accuracy.py``. Training evaluations (:func:`eva_det.engine.train_loop.do_test`) wrap
the training model in the same :class:`InferenceModel`. From the config (loaded with
:func:`eva_det.config.load.load_config`, which rejects misspelled override keys) it takes:

* ``cfg.model``, built on ``train.device`` (CPU, with a warning, when CUDA is missing), in eval
  mode;
* the weights of ``train.init_checkpoint`` (:func:`eva_det.engine.ema.load_checkpoint_for_eval`):
  the checkpoint's EMA weights with ``train.model_ema.enabled`` and
  ``use_ema_weights_for_eval_only``; a checkpoint that does not fit the model exactly is an
  error unless ``train.allow_checkpoint_mismatch``; read safely unless
  ``train.unsafe_load_executes_code``;
* test-time augmentation with ``test.aug.enabled`` (:func:`eva_det.modeling.tta.build_tta_model`);
* ``test.amp`` (autocast) and ``test.compile_backbone`` (:mod:`eva_det.engine.precision`),
  checked when the model is built and applied around every call.

Use::

    cfg = load_config("projects/ViTDet/configs/COCO/x.py", ["train.init_checkpoint=m.pth"])
    im = build_inference_model(cfg)
    outputs = im(batched_inputs)           # no_grad + test.amp + test.compile_backbone
    with im.precision():                   # or around your own loop over im.model
        inference_on_dataset(im.model, loader, evaluator)
"""

import logging
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from detectron2.config import instantiate
from torch import nn

from eva_det.modeling.tta import build_tta_model

from .ema import load_checkpoint_for_eval
from .precision import inference_precision, precision_settings

__all__ = ["InferenceModel", "build_inference_model", "build_model", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(cfg) -> str:
    """``cfg.train.device``, falling back to CPU (with a warning) when CUDA is unavailable.

    The resolved device is written back to ``cfg.train.device``.
    """
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("train.device=%s but CUDA is not available: running on CPU", device)
        device = "cpu"
    cfg.train.device = device
    return device


def build_model(cfg, device: Optional[str] = None) -> nn.Module:
    """Instantiate ``cfg.model`` on ``device`` (None: :func:`resolve_device`), random weights."""
    model = instantiate(cfg.model)
    model.to(device or resolve_device(cfg))
    return model


class InferenceModel:
    """A detector with the config's test options: TTA, ``test.amp``, ``test.compile_backbone``.

    Calling it runs ``model`` on a batch under ``torch.no_grad`` and :meth:`precision`. Code
    that runs its own loop (``inference_on_dataset``, batched postprocessing) passes ``model``
    and enters :meth:`precision` around the loop.

    Attributes:
        cfg: the config; ``test.amp`` is read again at each :meth:`precision` (benches toggle
            it).
        detector (nn.Module): the ``cfg.model`` instance (weights loaded by
            :func:`build_inference_model`).
        model (nn.Module): ``detector``, or its TTA wrapper when ``test.aug.enabled``.
    """

    def __init__(self, cfg, detector: nn.Module):
        """
        Args:
            cfg: LazyConfig (``test`` section optional; defaults in
                :mod:`eva_det.config.defaults`).
            detector (nn.Module): a built detector (possibly DDP-wrapped); its mode is left as
                it is (training evaluations switch it only inside ``inference_on_dataset``).

        Raises:
            InputError: unknown ``test.aug`` / ``test.amp`` keys.
            ValueError: a ``test.amp.dtype`` that is not supported, or TTA settings that do not
                fit the model.
        """
        precision_settings(cfg)  # bad test.amp keys / dtype fail before any image is run
        self.cfg = cfg
        self.detector = detector
        self.model = build_tta_model(cfg, detector)

    @contextmanager
    def precision(self) -> Iterator[None]:
        """``test.amp`` autocast and ``test.compile_backbone`` inside the block."""
        with inference_precision(self.cfg, self.model):
            yield

    def __call__(self, batched_inputs: List[dict]) -> List[dict]:
        """``model(batched_inputs)`` without gradients under :meth:`precision`.

        Args:
            batched_inputs (list[dict]): detectron2 model inputs (``"image"`` (C, H, W) tensor,
                optional ``"height"``, ``"width"``).

        Returns:
            list[dict]: the model's outputs, e.g. ``{"instances": Instances}`` per image.
        """
        with torch.no_grad(), self.precision():
            return self.model(batched_inputs)


def build_inference_model(
    cfg, *, load_weights: bool = True, device: Optional[str] = None
) -> InferenceModel:
    """The detector of ``cfg`` ready for inference (see the module docstring).

    Args:
        cfg: LazyConfig with ``model`` and ``train`` (``init_checkpoint``, ``device``,
            ``model_ema``, ``allow_checkpoint_mismatch``, ``unsafe_load_executes_code``) and an
            optional ``test`` section.
        load_weights (bool): load ``train.init_checkpoint``; False keeps the random
            initialisation (benchmarks).
        device (str or None): where the model runs; None: ``train.device``
            (:func:`resolve_device`).

    Returns:
        InferenceModel: ``detector`` and ``model`` in eval mode.

    Raises:
        InputError: the checkpoint does not fit the model or cannot be read safely; unknown
            ``test.aug`` / ``test.amp`` / ``train.model_ema`` keys.
        KeyError: EMA weights were asked for but the checkpoint has none.
    """
    detector = build_model(cfg, device)
    detector.eval()
    if load_weights:
        if not cfg.train.get("init_checkpoint", ""):
            logger.warning(
                "train.init_checkpoint is empty: the model has random weights. Pass "
                "train.init_checkpoint=/path/to/model.pth (--weights in tools/demo.py)."
            )
        load_checkpoint_for_eval(cfg, detector)  # EMA weights, strict fit, safe loading
    model = InferenceModel(cfg, detector)
    model.model.eval()  # a TTA wrapper starts in train mode
    return model
