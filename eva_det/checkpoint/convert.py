"""Convert pretrained EVA / EVA-02 backbones into eva_det's detector layout.

Entry points:

* :func:`detect_format` - which of :data:`FORMATS` a state dict is in;
* :func:`convert_pretrained` - ``dict -> ConversionResult`` for any of them;
* :func:`convert_file` - load a file, unwrap its container, convert, write ``{"model": ...}``
  atomically and log a summary (what ``tools/convert_pretrained.py`` runs);
* :func:`convert_for_model` - convert a loaded pretrained backbone for a given detector on the
  fly (what loading hub-named weights such as ``timm/eva02_base_patch14_224.mim_in22k`` runs).

The per-generation renames are documented in :mod:`eva_det.checkpoint.convert_eva01` and
:mod:`eva_det.checkpoint.convert_eva02`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from eva_det.utils.atomic import atomic_torch_save
from eva_det.utils.modules import unwrap_ddp

from .convert_common import ConversionResult, group_blocks, key_pattern, split_backbone_prefix
from .convert_eva01 import convert_eva01
from .convert_eva02 import convert_eva02, convert_timm_eva02, eva02_model_settings
from .safe_load import load_checkpoint_file

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "detect_format",
    "convert_pretrained",
    "unwrap_state_dict",
    "summarize_dropped",
    "load_checkpoint",
    "convert_file",
    "is_detector_state_dict",
    "convert_for_model",
]

#: Source layouts :func:`convert_pretrained` accepts (plus ``"auto"``).
#: ``timm_eva`` uses the same names as ``eva01`` (timm kept BEiT's), so both share a converter and
#: :func:`detect_format` reports such files as ``eva01``.
FORMATS = ("eva01", "eva02", "timm_eva", "timm_eva02")

_CONVERTERS = {
    "eva01": convert_eva01,
    "timm_eva": convert_eva01,
    "eva02": convert_eva02,
    "timm_eva02": convert_timm_eva02,
}

_CONTAINER_KEYS = ("model", "module", "state_dict")


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Descend through ``"model"``, ``"module"`` (DeepSpeed) and ``"state_dict"`` containers.

    Args:
        checkpoint (Mapping): what ``torch.load`` returned.

    Returns:
        dict[str, Tensor]: the innermost mapping, with only its tensor entries.
    """
    found = True
    while found:
        found = False
        for key in _CONTAINER_KEYS:
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping):
                logger.info("Unwrapping checkpoint['%s'].", key)
                checkpoint, found = inner, True
                break
    skipped = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if skipped:
        logger.info("Ignoring non-tensor entries: %s.", ", ".join(map(str, skipped)))
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def detect_format(state_dict: Mapping[str, torch.Tensor], prefix: str | None = None) -> str:
    """Tell which source layout a backbone state dict uses, from its first block's MLP.

    * ``mlp.w1`` / ``mlp.w12`` / ``mlp.w3`` (official SwiGLU names) -> ``"eva02"``;
    * ``mlp.fc1_g`` or a packed ``mlp.fc1`` with twice the rows ``mlp.fc2`` has columns
      (timm's GluMlp) -> ``"timm_eva02"``;
    * plain ``mlp.fc1`` / ``mlp.fc2`` -> ``"eva01"`` (also the answer for timm EVA-01 files, whose
      names are the same).

    Args:
        state_dict (Mapping[str, Tensor]): unwrapped tensors, with or without a wrapper prefix.
        prefix (str or None): the ViT's key prefix; ``None`` to infer it.

    Returns:
        str: one of ``"eva01"``, ``"eva02"``, ``"timm_eva02"``.

    Raises:
        ValueError: when no ViT block or no known MLP naming is found.
    """
    inner, prefix, _ = split_backbone_prefix(dict(state_dict), prefix)
    blocks, _ = group_blocks(inner)
    if not blocks:
        raise ValueError(f"No 'blocks.<i>.' keys under prefix '{prefix}': not a ViT checkpoint.")
    block = next(iter(blocks.values()))
    if any(f"mlp.{n}.weight" in block for n in ("w1", "w12", "w3")):
        return "eva02"
    if "mlp.fc1_g.weight" in block:
        return "timm_eva02"
    if "mlp.fc1.weight" in block and "mlp.fc2.weight" in block:
        if block["mlp.fc1.weight"].shape[0] == 2 * block["mlp.fc2.weight"].shape[1]:
            return "timm_eva02"  # packed gate + value rows: a SwiGLU, not a GELU MLP
        return "eva01"
    raise ValueError(
        f"Cannot tell the format from block keys {sorted(block)}: expected mlp.fc1/fc2 (EVA-01), "
        "mlp.w1/w2/w3 (EVA-02) or mlp.fc1_g/fc1_x/fc2 (timm EVA-02). Pass the format explicitly."
    )


def convert_pretrained(
    state_dict: Mapping[str, torch.Tensor],
    format: str = "auto",
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
) -> ConversionResult:
    """Convert a pretrained backbone state dict to eva_det's ``backbone.net.*`` names.

    Args:
        state_dict (Mapping[str, Tensor]): unwrapped source tensors (see :func:`unwrap_state_dict`).
        format (str): ``"auto"`` or one of :data:`FORMATS`.
        patch_size (int): target patch size (kernel resized when different).
        pretrain_img_size (int): image size the target pos_embed describes (grid = size // patch).
        keep_gamma (bool): keep LayerScale ``gamma_1``/``gamma_2`` instead of dropping them.
        prefix (str or None): the ViT's key prefix (``"visual."``...); ``None`` to infer it.

    Returns:
        ConversionResult: ``(state_dict, dropped)``.
    """
    if format == "auto":
        format = detect_format(state_dict, prefix)
        logger.info("Detected checkpoint format: %s.", format)
    if format not in _CONVERTERS:
        raise ValueError(f"Unknown format '{format}'; expected 'auto' or one of {FORMATS}.")
    return _CONVERTERS[format](
        dict(state_dict),
        patch_size=patch_size,
        pretrain_img_size=pretrain_img_size,
        keep_gamma=keep_gamma,
        prefix=prefix,
    )


def summarize_dropped(dropped: Mapping[str, str]) -> list[tuple[str, int, str]]:
    """Group dropped keys by pattern (numeric parts -> ``*``).

    Returns:
        list[tuple[str, int, str]]: ``(pattern, number of keys, reason)`` in first-seen order.
    """
    counts: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    for key, reason in dropped.items():
        pattern = key_pattern(key)
        counts[pattern] += 1
        reasons.setdefault(pattern, reason)
    return [(pattern, counts[pattern], reasons[pattern]) for pattern in reasons]


def load_checkpoint(path: str, *, unsafe_load_executes_code: bool = False) -> Any:
    """Load a pretrained file on CPU with :func:`.safe_load.load_checkpoint_file`.

    ``weights_only=True`` with the types official EVA files pickle next to their weights
    (``argparse.Namespace`` training args, numpy scalars) allowed by name. Files that pickle
    anything else are refused with an InputError unless ``unsafe_load_executes_code``, which
    runs the file's pickled code (trusted files only).
    """
    return load_checkpoint_file(path, unsafe_load_executes_code=unsafe_load_executes_code)


_DETECTOR_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")


def is_detector_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are a detector's (``backbone.*``, ``roi_heads.*``...), not a bare ViT's."""
    return any(isinstance(k, str) and k.startswith(_DETECTOR_PREFIXES) for k in state_dict)


def _backbone_geometry(model: torch.nn.Module) -> tuple[int, int]:
    """``(patch size, pretrain image size)`` of ``model.backbone.net`` (16, 224 if unknown).

    Read from the shapes of ``backbone.net.patch_embed.proj.weight`` (C, 3, p, p) and
    ``backbone.net.pos_embed`` (1, [1 +] g*g, C): pretrain image size = g * p.
    """
    model = unwrap_ddp(model)
    state = model.state_dict()
    weight = state.get("backbone.net.patch_embed.proj.weight")
    pos = state.get("backbone.net.pos_embed")
    if weight is None or pos is None:
        return 16, 224
    patch, tokens = int(weight.shape[-1]), int(pos.shape[-2])
    for n in (tokens, tokens - 1):
        grid = math.isqrt(n)
        if grid * grid == n:
            return patch, grid * patch
    return patch, 224


def convert_for_model(loaded: Mapping[str, Any], model: torch.nn.Module, source: str) -> Mapping:
    """A loaded checkpoint made loadable into ``model``.

    Detector checkpoints are returned as they are; a pretrained ViT backbone (EVA-01, EVA-02,
    timm EVA-02; any container) is converted with :func:`convert_pretrained` to the patch size
    and position-embedding grid of ``model.backbone.net``.

    Args:
        loaded (Mapping): what was read from the file.
        model (nn.Module): the detector the weights are for.
        source (str): the checkpoint's name, for the log.

    Returns:
        Mapping: ``loaded``, or ``{"model": converted state dict}``.
    """
    state_dict = unwrap_state_dict(loaded)
    if is_detector_state_dict(state_dict):
        return loaded
    patch_size, pretrain_img_size = _backbone_geometry(model)
    result = convert_pretrained(
        state_dict, "auto", patch_size=patch_size, pretrain_img_size=pretrain_img_size
    )
    logger.info(
        "Converted pretrained backbone %s on load: %d keys for backbone.net (patch %d, "
        "pos_embed grid %d), %d source keys dropped.",
        source,
        len(result.state_dict),
        patch_size,
        pretrain_img_size // patch_size,
        len(result.dropped),
    )
    for pattern, count, reason in summarize_dropped(result.dropped):
        logger.info("  dropped %s (%d key%s): %s", pattern, count, "s" * (count != 1), reason)
    return {"model": result.state_dict}


def convert_file(
    input_path: str,
    output_path: str,
    format: str = "auto",
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
    unsafe_load_executes_code: bool = False,
) -> ConversionResult:
    """Load ``input_path``, convert it (:func:`convert_pretrained`), write ``{"model": ...}``.

    ``input_path`` is read safely (:func:`load_checkpoint`); ``unsafe_load_executes_code=True``
    loads a trusted file that pickles other objects, running its code. The output holds only
    tensors, so it loads safely everywhere afterwards.

    The output is written atomically (:func:`eva_det.utils.atomic.atomic_torch_save`) and can
    be given to detectron2's ``train.init_checkpoint``. A summary is logged: keys converted and
    dropped, and each dropped key pattern with its count and reason.

    Returns:
        ConversionResult: what was written (``state_dict``) and what was left out.
    """
    if output_path.endswith((".pkl", ".pyth")):
        raise ValueError(
            f"Output {output_path}: detectron2 reads .pkl/.pyth files as Caffe2/pycls models; "
            "use a .pth name."
        )
    checkpoint = load_checkpoint(input_path, unsafe_load_executes_code=unsafe_load_executes_code)
    state_dict = unwrap_state_dict(checkpoint)
    result = convert_pretrained(
        state_dict,
        format,
        patch_size=patch_size,
        pretrain_img_size=pretrain_img_size,
        keep_gamma=keep_gamma,
        prefix=prefix,
    )
    atomic_torch_save({"model": result.state_dict}, output_path)
    logger.info(
        "Wrote %s: %d keys converted, %d source keys dropped.",
        output_path,
        len(result.state_dict),
        len(result.dropped),
    )
    for pattern, count, reason in summarize_dropped(result.dropped):
        logger.info("  dropped %s (%d key%s): %s", pattern, count, "s" * (count != 1), reason)
    settings = eva02_model_settings(result.state_dict)
    if settings is not None:
        layout = "B/L, with" if settings["subln"] else "Ti/S, without"
        logger.info(
            "EVA-02 %s SwiGLU sub-LN (mlp.ffn_ln): train / evaluate %s with "
            "model.backbone.net.subln=%s%s.",
            layout,
            output_path,
            settings["subln"],
            " (the default)" if settings["subln"] else "",
        )
    return result
