"""Inference precision and compilation for evaluation: ``test.amp`` and ``test.compile_backbone``.

Both options are read from the config's ``test`` section, merged over the defaults of
:func:`eva_det.config.defaults.test_defaults`, so they work on the command line for every config::

    --eval-only --config-file CFG ... test.amp.enabled=True test.amp.dtype=bfloat16
    --eval-only --config-file CFG ... test.compile_backbone=True

``test.amp`` runs the model under ``torch.autocast`` (matmuls, convolutions and attention in
bfloat16 or float16; what stays in float32 is autocast's choice, as in training with
``train.amp``). The official EVA code evaluates in float32; ``test.amp`` is an opt-in.
Precision-sensitive steps stay in float32 regardless: detectron2 decodes box deltas in float32
(``Box2BoxTransform.apply_deltas``), torchvision's ROIAlign upcasts under autocast, and the ViT's
residual stream stays float32 (16-bit block outputs are added to it).

LayerNorm: the official EVA-01 ViT defaults to ``LayerNormWithForceFP32`` (normalise in float32,
cast back; :class:`eva_det.modeling.backbone.norm.LayerNormWithForceFP32` is EVAViT's default
too), but the official configs, like eva_det's, pass ``partial(nn.LayerNorm, eps=1e-6)``. Under
CUDA autocast ``layer_norm`` runs in float32 anyway; CPU autocast keeps a 16-bit input in 16 bit,
which matters only where a LayerNorm sees a 16-bit tensor (EVA-02's SwiGLU sub-LN; EVA-01's
LayerNorms see the float32 residual stream). To force float32 everywhere, set in a config
``model.backbone.net.norm_layer = partial(LayerNormWithForceFP32, eps=1e-6)``. Softmax is left as
the official code has it (inside SDPA, or ``softmax`` in the input dtype for
``attn_impl="plain"``).

Autocast keeps its 16-bit copies of the weights until the evaluation ends (2 bytes per parameter
on top of the float32 weights) so they are cast once, not once per image.

``test.compile_backbone`` compiles the ViT (``model.backbone.net``) with
``torch.compile(dynamic=False)`` for the duration of evaluation. The compiled wrapper is swapped
in and the original module restored afterwards, so parameter names (checkpoints, EMA) never see
``_orig_mod``. With ``model.backbone.square_pad`` every image has the same shape and compiles
once; with ``square_pad=0`` each new input size recompiles.
"""

import logging
from contextlib import ExitStack, contextmanager, nullcontext
from typing import ContextManager, Iterator, Optional

import torch
from torch import nn

from eva_det.utils.modules import unwrap_ddp
from eva_det.utils.sections import read_section

__all__ = [
    "AMP_DTYPES",
    "precision_settings",
    "autocast_context",
    "compiled_backbone",
    "inference_precision",
]

logger = logging.getLogger(__name__)

#: ``test.amp.dtype`` names and the torch dtypes they select.
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def precision_settings(cfg) -> dict:
    """``cfg.test.amp`` and ``cfg.test.compile_backbone`` merged over their defaults.

    The defaults are :func:`eva_det.config.defaults.test_defaults` (which
    ``configs/common/test.py`` also uses).

    Returns:
        dict: ``{"amp": {"enabled": bool, "dtype": str}, "compile_backbone": bool}``.

    Raises:
        InputError: an unknown ``test.amp`` key.
        ValueError: an unknown ``test.amp.dtype``.
    """
    from eva_det.config.defaults import test_defaults

    defaults = test_defaults()
    amp = read_section(cfg, "test.amp", defaults["amp"])
    test = cfg.get("test", None)
    compile_backbone = bool(defaults["compile_backbone"])
    if test is not None:
        compile_backbone = bool(test.get("compile_backbone", compile_backbone))
    amp["enabled"] = bool(amp["enabled"])
    if amp["dtype"] not in AMP_DTYPES:
        raise ValueError(
            f"test.amp.dtype={amp['dtype']!r} is not supported: use one of {sorted(AMP_DTYPES)}"
        )
    return {"amp": amp, "compile_backbone": compile_backbone}


def _device_type(cfg, model: Optional[nn.Module]) -> str:
    """Device type of ``model``'s parameters, else of ``cfg.train.device`` (CPU without CUDA)."""
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None:
            return param.device.type
    device = str(cfg.train.get("device", "cuda")).split(":")[0]
    return device if device != "cuda" or torch.cuda.is_available() else "cpu"


def autocast_context(cfg, model: Optional[nn.Module] = None) -> ContextManager:
    """``torch.autocast`` per ``test.amp`` (a no-op context when it is disabled).

    Args:
        cfg: LazyConfig with optional ``test.amp.{enabled,dtype}``.
        model (nn.Module, optional): its parameters' device selects the autocast device type;
            without it, ``cfg.train.device``.
    """
    amp = precision_settings(cfg)["amp"]
    if not amp["enabled"]:
        return nullcontext()
    device_type = _device_type(cfg, model)
    logger.info("Evaluating under autocast: %s on %s", amp["dtype"], device_type)
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[amp["dtype"]])


def _detector(model: nn.Module) -> nn.Module:
    """The module holding ``backbone``: unwraps DDP and wrappers with ``.model`` (e.g. TTA)."""
    seen = model
    while not hasattr(seen, "backbone"):
        if unwrap_ddp(seen) is not seen:
            seen = unwrap_ddp(seen)
        elif isinstance(getattr(seen, "model", None), nn.Module):
            seen = seen.model
        else:
            raise ValueError(
                f"test.compile_backbone=True needs a detector with a `backbone`, got "
                f"{type(model).__name__}; set test.compile_backbone=False"
            )
    return seen


@contextmanager
def compiled_backbone(model: nn.Module, backend: str = "inductor") -> Iterator[nn.Module]:
    """Swap ``model.backbone.net`` for ``torch.compile(net, dynamic=False)`` inside the block.

    Args:
        model (nn.Module): a detector whose ``backbone.net`` is the ViT (detectron2's
            ``SimpleFeaturePyramid``), possibly wrapped in DDP or a TTA wrapper.
        backend (str): ``torch.compile`` backend ("inductor"; "eager" only traces).

    Yields:
        nn.Module: the compiled ViT.
    """
    backbone = _detector(model).backbone
    net = getattr(backbone, "net", None)
    if not isinstance(net, nn.Module):
        raise ValueError(
            f"test.compile_backbone=True needs model.backbone.net (a ViTDet SimpleFeaturePyramid), "
            f"but the backbone is {type(backbone).__name__}; set test.compile_backbone=False"
        )
    # a fresh wrapper is cheap: dynamo keeps the compiled graphs of net's forward between calls
    compiled = torch.compile(net, dynamic=False, backend=backend)
    backbone.net = compiled
    try:
        yield compiled
    finally:
        backbone.net = net


@contextmanager
def inference_precision(cfg, model: nn.Module) -> Iterator[None]:
    """Evaluate ``model`` under ``test.amp`` and ``test.compile_backbone`` inside the block.

    Args:
        cfg: LazyConfig (``test`` section optional, defaults in :mod:`eva_det.config.defaults`).
        model (nn.Module): the model about to be evaluated (detector, DDP or TTA wrapper).
    """
    settings = precision_settings(cfg)
    with ExitStack() as stack:
        if settings["compile_backbone"]:
            logger.info("Evaluating with a compiled backbone (torch.compile, dynamic=False)")
            stack.enter_context(compiled_backbone(model))
        stack.enter_context(autocast_context(cfg, model))
        yield
