"""Building blocks shared by the EVA-01 and EVA-02 pretrained-checkpoint converters.

Everything here is a pure function on tensors or ``dict[str, Tensor]``: no file access, no model
construction. The converters in :mod:`eva_det.checkpoint.convert_eva01` and
:mod:`eva_det.checkpoint.convert_eva02` use them to

* find the ViT inside a wrapper (``visual.`` of a CLIP model, ``encoder.`` of a MIM model, ...),
* resize the patch-embedding kernel and the absolute position embedding the way the official
  ``EVA-01/eva/interpolate_patch_14to16.py`` script does,
* fuse or split attention projections,
* classify the keys a detector has no use for, with a reason that the caller logs.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "TARGET_PREFIX",
    "ConversionResult",
    "run_conversion",
    "take",
    "key_pattern",
    "split_backbone_prefix",
    "group_blocks",
    "convert_stem",
    "resize_patch_embed",
    "resize_pos_embed",
    "fuse_qkv",
    "split_qkv",
    "drop_reason",
]

#: Where the detector keeps its ViT: ``SimpleFeaturePyramid.net`` inside ``model.backbone``.
TARGET_PREFIX = "backbone.net."

_PATCH_KEY = "patch_embed.proj.weight"


class ConversionResult(NamedTuple):
    """Output of a converter.

    Attributes:
        state_dict (dict[str, Tensor]): converted tensors, named as in eva_det's detector.
        dropped (dict[str, str]): every source key that has no counterpart in ``state_dict``,
            mapped to the reason it was left out (full source names, wrapper prefix included).
    """

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, str]


# Keys a detector has no use for. Checked in order; the first match gives the reason.
# The flag says whether dropping it changes what the backbone computes (logged as a warning).
_DROP_RULES: list[tuple[re.Pattern[str], str, bool]] = [
    (
        re.compile(r"^cls_token$"),
        "class token: ViTDet has none (the cls slot of pos_embed is kept)",
        False,
    ),
    (re.compile(r"^mask_token$"), "MIM mask token, used only in pretraining", False),
    (re.compile(r"^(lm_head|head)\.|^decoder"), "pretraining / classification head", False),
    (
        re.compile(r"^(norm|fc_norm)\."),
        "final LayerNorm: ViTDet feeds the last block to the FPN without it",
        False,
    ),
    (
        re.compile(r"(^|\.)rope\."),
        "rotary tables are fixed buffers that the model recomputes for its own token grid",
        False,
    ),
    (
        re.compile(r"relative_position_(bias_table|index)|(^|\.)rel_pos_bias\."),
        "BEiT-style relative position bias: the detector uses its own zero-initialised "
        "decomposed relative positions",
        False,
    ),
    (
        re.compile(r"\.attn\.(k_proj\.bias|k_bias)$"),
        "key bias: it adds a per-query constant to the attention logits, which softmax "
        "cancels, so leaving it out is exact",
        False,
    ),
    (
        re.compile(r"\.gamma_[12]$"),
        "LayerScale, which the EVA detectors do not have (pass keep_gamma=True to keep it)",
        True,
    ),
    (
        re.compile(r"\.attn\.(inner_attn_ln|norm)\."),
        "LayerNorm inside attention (EVA-CLIP only): the detector has none, so the converted "
        "backbone does not compute the same function",
        True,
    ),
]


def drop_reason(key: str) -> tuple[str, bool]:
    """Say why a backbone key (wrapper prefix removed) is not converted.

    Args:
        key (str): key relative to the ViT, e.g. ``"blocks.3.attn.rope.freqs_cos"``.

    Returns:
        tuple[str, bool]: the reason, and whether leaving the key out changes the function the
        backbone computes (such keys deserve a warning).
    """
    for pattern, reason, changes_function in _DROP_RULES:
        if pattern.search(key):
            return reason, changes_function
    return "not recognised by this converter", True


def split_backbone_prefix(
    state_dict: dict[str, torch.Tensor], prefix: str | None = None
) -> tuple[dict[str, torch.Tensor], str, dict[str, str]]:
    """Separate the ViT's tensors from whatever wraps them.

    Pretrained files name the ViT differently: bare (``blocks.0...``), under ``visual.`` (EVA-CLIP),
    ``visual.trunk.`` (OpenCLIP + timm), ``encoder.`` (MIM wrappers) or ``module.`` (DeepSpeed).
    Unless given, the prefix is whatever precedes the single ``patch_embed.proj.weight`` key.

    Args:
        state_dict (dict[str, Tensor]): source tensors.
        prefix (str or None): the ViT's prefix, ``""`` for none; ``None`` to infer it.

    Returns:
        tuple: ``(inner, prefix, outside)`` where ``inner`` holds the ViT's tensors with the
        prefix removed and ``outside`` maps every other key to the reason it is dropped.

    Raises:
        ValueError: no or several patch embeddings, or a checkpoint already in eva_det layout.
    """
    if prefix is None:
        found = sorted(k[: -len(_PATCH_KEY)] for k in state_dict if k.endswith(_PATCH_KEY))
        if not found:
            sample = ", ".join(list(state_dict)[:8])
            raise ValueError(
                f"No '{_PATCH_KEY}' key found, so this is not a ViT backbone checkpoint "
                f"(first keys: {sample}). Pass the right file, or unwrap it first."
            )
        if len(found) > 1:
            raise ValueError(f"Found several ViTs (prefixes {found}); pass prefix=... to pick one.")
        prefix = found[0]
    if prefix.endswith(TARGET_PREFIX):
        raise ValueError(
            f"Keys start with '{prefix}': the checkpoint is already in eva_det's detector layout. "
            "Give it to train.init_checkpoint directly instead of converting it."
        )
    inner: dict[str, torch.Tensor] = {}
    outside: dict[str, str] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            inner[key[len(prefix) :]] = value
        else:
            outside[key] = f"outside the ViT (which lives under '{prefix}')"
    return inner, prefix, outside


_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def group_blocks(
    inner: dict[str, torch.Tensor],
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Split ViT keys into per-block dicts and the rest.

    Args:
        inner (dict[str, Tensor]): ViT tensors without wrapper prefix.

    Returns:
        tuple: ``(blocks, rest)``; ``blocks[i]`` maps names relative to ``blocks.i.`` (such as
        ``"attn.qkv.weight"``) to tensors, ordered by block index.
    """
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in inner.items():
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[match.group(2)] = value
        else:
            rest[key] = value
    return dict(sorted(blocks.items())), rest


def resize_patch_embed(weight: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Resize a patch-embedding kernel, e.g. (C, 3, 14, 14) -> (C, 3, 16, 16).

    Same operation as the official ``EVA-01/eva/interpolate_patch_14to16.py`` (which produced the
    released ``*_p14to16`` / ``eva_psz14to16`` files): bicubic ``F.interpolate`` over the two
    spatial axes, ``align_corners=False``, computed in float32, no rescaling of the values.
    (timm's ``resample_patch_embed`` uses a pseudo-inverse instead; it gives different numbers.)

    Args:
        weight (Tensor): kernel of shape (C_out, C_in, kh, kw).
        patch_size (int): new kernel side.

    Returns:
        Tensor: float32 kernel of shape (C_out, C_in, patch_size, patch_size); the input itself when
        it already has that size.
    """
    if tuple(weight.shape[-2:]) == (patch_size, patch_size):
        return weight
    return F.interpolate(
        weight.float(), size=(patch_size, patch_size), mode="bicubic", align_corners=False
    )


def _grid_side(num_tokens: int) -> int | None:
    side = math.isqrt(num_tokens)
    return side if side * side == num_tokens else None


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Bring an absolute position embedding to ``(1, 1 + grid*grid, C)``, cls slot first.

    The patch part is reshaped to its square grid and bicubically resized (``align_corners=False``,
    no antialiasing, in float32), as the official EVA 14-to-16 script does; the cls slot is copied
    unchanged. A source without cls slot gets a zero one (the detector discards that slot anyway).

    Args:
        pos_embed (Tensor): (1, N, C), (N, C); N = side*side or 1 + side*side.
        grid (int): token grid side at pretraining resolution (224 / 16 = 14).

    Returns:
        Tensor: (1, 1 + grid*grid, C); the input itself when nothing needs to change.
    """
    if pos_embed.dim() == 2:
        pos_embed = pos_embed.unsqueeze(0)
    num_tokens, dim = pos_embed.shape[1], pos_embed.shape[2]
    changed = False
    side = _grid_side(num_tokens)  # a perfect square means there is no cls slot
    if side is not None:
        cls_slot, patch_pos = pos_embed.new_zeros(1, 1, dim), pos_embed
        changed = True
        logger.info("pos_embed has no cls slot; adding a zero one.")
    else:
        side = _grid_side(num_tokens - 1)
        if side is None:
            raise ValueError(
                f"pos_embed has {num_tokens} tokens, neither side^2 nor 1 + side^2: "
                "cannot find its square grid."
            )
        cls_slot, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    if side != grid:
        # (1, side*side, C) -> (1, C, side, side) -> resize -> (1, grid*grid, C)
        patch_pos = patch_pos.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
        cls_slot = cls_slot.float()
        changed = True
        logger.info("Resized pos_embed grid %dx%d -> %dx%d (bicubic).", side, side, grid, grid)
    if not changed:
        return pos_embed
    return torch.cat([cls_slot, patch_pos], dim=1)


def convert_stem(
    rest: dict[str, torch.Tensor], out: dict[str, torch.Tensor], patch_size: int, grid: int
) -> None:
    """Move ``patch_embed.proj.*`` and ``pos_embed`` from ``rest`` into ``out`` (target names).

    Args:
        rest (dict[str, Tensor]): non-block ViT tensors; the converted keys are popped from it.
        out (dict[str, Tensor]): receives ``backbone.net.patch_embed.proj.{weight,bias}`` and
            ``backbone.net.pos_embed``.
        patch_size (int): target patch size (16).
        grid (int): target pos_embed grid side (pretrain image size // patch size = 14).
    """
    weight = rest.pop(_PATCH_KEY)
    resized = resize_patch_embed(weight, patch_size)
    if resized is not weight:
        logger.info(
            "Resized patch_embed kernel %dx%d -> %dx%d (bicubic).",
            weight.shape[-2],
            weight.shape[-1],
            patch_size,
            patch_size,
        )
    out[TARGET_PREFIX + _PATCH_KEY] = resized
    if "patch_embed.proj.bias" in rest:
        out[TARGET_PREFIX + "patch_embed.proj.bias"] = rest.pop("patch_embed.proj.bias")
    if "pos_embed" in rest:
        out[TARGET_PREFIX + "pos_embed"] = resize_pos_embed(rest.pop("pos_embed"), grid)
    else:
        logger.warning("No pos_embed in the checkpoint: the detector keeps its random init.")


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stack separate q/k/v projection weights (D, C) into one fused (3D, C) ``qkv`` weight.

    The fused layout (rows q, then k, then v) is the BEiT/EVA-01/timm one: ``qkv(x)`` is reshaped
    to (B, N, 3, heads, head_dim), so the first D output rows are q.
    """
    return torch.cat([q, k, v], dim=0)


def split_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`: split a fused (3D, ...) weight or bias into q, k, v."""
    if qkv.shape[0] % 3:
        raise ValueError(f"Fused qkv has {qkv.shape[0]} rows, not a multiple of 3.")
    q, k, v = qkv.chunk(3, dim=0)
    return q, k, v


def take(block: dict[str, torch.Tensor], name: str, index: int) -> torch.Tensor:
    """Pop a required tensor from one block's dict, with an error that lists what is there.

    Args:
        block (dict[str, Tensor]): tensors of block ``index``, names relative to ``blocks.i.``.
        name (str): e.g. ``"mlp.fc1.weight"``.
        index (int): block index, for the message.
    """
    if name not in block:
        raise ValueError(
            f"Block {index} has no '{name}' (it has: {', '.join(sorted(block))}). "
            "Is the format right? Try format='auto' or the other EVA generation."
        )
    return block.pop(name)


# Block entries that EVA-01 and EVA-02 name the same way in every source layout.
_COMMON_BLOCK_KEYS = (
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
    "attn.proj.weight",
    "attn.proj.bias",
)

#: ``convert_block(index, block, converted)``: pop the attention / MLP tensors of one block from
#: ``block`` and store them in ``converted`` under target names relative to ``blocks.i.``.
BlockConverter = Callable[[int, dict[str, torch.Tensor], dict[str, torch.Tensor]], None]


def key_pattern(key: str) -> str:
    """Replace numeric key parts by ``*``: ``blocks.7.attn.q_bias`` -> ``blocks.*.attn.q_bias``."""
    return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", key)


def run_conversion(
    state_dict: dict[str, torch.Tensor],
    convert_block: BlockConverter,
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
) -> ConversionResult:
    """Convert a ViT checkpoint into eva_det's ``backbone.net.*`` layout.

    Steps: find the ViT (:func:`split_backbone_prefix`), convert the stem (:func:`convert_stem`),
    copy the per-block norms and attention output projection, let ``convert_block`` handle the
    generation-specific attention inputs and MLP, and give every remaining key a drop reason.

    Args:
        state_dict (dict[str, Tensor]): unwrapped source tensors.
        convert_block (BlockConverter): generation-specific per-block conversion.
        patch_size (int): target patch size.
        pretrain_img_size (int): image size the target pos_embed describes (grid = size // patch).
        keep_gamma (bool): keep LayerScale ``gamma_1``/``gamma_2`` as ``blocks.i.gamma_*``.
        prefix (str or None): the ViT's prefix in ``state_dict``; ``None`` to infer it.

    Returns:
        ConversionResult: converted tensors and the reason for every dropped key.
    """
    inner, prefix, dropped = split_backbone_prefix(state_dict, prefix)
    if prefix:
        logger.info("Taking the ViT from under prefix '%s'.", prefix)
    blocks, rest = group_blocks(inner)
    if not blocks:
        raise ValueError(f"No 'blocks.<i>.' keys under prefix '{prefix}': not a ViT checkpoint.")
    if list(blocks) != list(range(len(blocks))):
        raise ValueError(f"Block indices are not 0..{len(blocks) - 1}: {list(blocks)}.")

    out: dict[str, torch.Tensor] = {}
    convert_stem(rest, out, patch_size, pretrain_img_size // patch_size)
    leftovers = {}  # ViT keys not converted, relative to the prefix
    for index, block in blocks.items():
        converted = {name: take(block, name, index) for name in _COMMON_BLOCK_KEYS}
        if keep_gamma:
            for name in ("gamma_1", "gamma_2"):
                if name in block:
                    converted[name] = block.pop(name)
        convert_block(index, block, converted)
        for name, value in converted.items():
            out[f"{TARGET_PREFIX}blocks.{index}.{name}"] = value
        leftovers.update((f"blocks.{index}.{name}", value) for name, value in block.items())
    leftovers.update(rest)

    warned = set()
    for key in leftovers:
        reason, changes_function = drop_reason(key)
        dropped[prefix + key] = reason
        pattern = key_pattern(prefix + key)
        if changes_function and pattern not in warned:
            warned.add(pattern)
            logger.warning("Dropping %s: %s.", pattern, reason)
    return ConversionResult(out, dropped)
