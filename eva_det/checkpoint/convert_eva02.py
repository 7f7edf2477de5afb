"""EVA-02 pretrained backbones (official or timm naming) <-> eva_det detector names.

Official EVA-02 layout (``EVA-02/asuka/modeling_pretrain.py`` / ``modeling_finetune.py``, the
``eva02_{B,L}_pt_*_p14to16.pt`` MIM files used by ``EVA-02/det``), relative to the ViT:
``blocks.i.attn.{q_proj,k_proj,v_proj}.weight`` (no bias) plus ``attn.q_bias`` / ``attn.v_bias``,
``attn.proj.*``; SwiGLU MLP ``mlp.w1`` (gate, SiLU), ``mlp.w2``, sub-LayerNorm ``mlp.ffn_ln``,
``mlp.w3``; rotary tables ``rope.freqs_{cos,sin}`` (again under every ``blocks.i.attn.rope.``);
plus ``cls_token``, ``mask_token``, ``pos_embed``, ``norm``, ``lm_head``. Ti/S variants use a
packed ``mlp.w12`` (xformers SwiGLU: gate rows first) and no ``ffn_ln``.

timm ``Eva`` renames these (``timm/models/eva.py: checkpoint_filter_fn``): ``w1`` -> ``fc1_g``,
``w2`` -> ``fc1_x``, ``ffn_ln`` -> ``norm``, ``w3`` -> ``fc2``, ``w12`` -> ``fc1``; with separate
q/k/v it stores ``q_bias``/``v_bias`` as ``q_proj.bias``/``v_proj.bias``; Ti/S keep a fused
``qkv.weight`` with ``q_bias``/``v_bias``. EVA-CLIP's attention sub-LN ``attn.inner_attn_ln`` is
timm's ``attn.norm``.

Target (``backbone.net.`` + ...): ``pos_embed`` (1, 1 + 14*14, C), ``patch_embed.proj.*`` (16x16),
``blocks.i.{norm1,norm2}.*``, ``blocks.i.attn.{q_proj,k_proj,v_proj}.weight``,
``blocks.i.attn.{q_bias,v_bias,proj.weight,proj.bias}``, ``blocks.i.mlp.{w1,w2,w3,ffn_ln}.*``.
"""

from __future__ import annotations

import logging
import re

import torch

from .convert_common import TARGET_PREFIX, ConversionResult, run_conversion, split_qkv, take

logger = logging.getLogger(__name__)

__all__ = [
    "convert_eva02",
    "convert_timm_eva02",
    "eva02_model_settings",
    "timm_eva02_to_eva02",
    "eva02_to_timm",
]

# timm name -> official name, applied to the part after "blocks.i.". Anchored at the end so that
# "mlp.fc1." (packed) never matches "mlp.fc1_g.".
_TIMM_TO_OFFICIAL = [
    (re.compile(r"^attn\.q_proj\.bias$"), "attn.q_bias"),
    (re.compile(r"^attn\.v_proj\.bias$"), "attn.v_bias"),
    (re.compile(r"^attn\.norm\.(weight|bias)$"), r"attn.inner_attn_ln.\1"),
    (re.compile(r"^mlp\.fc1_g\.(weight|bias)$"), r"mlp.w1.\1"),
    (re.compile(r"^mlp\.fc1_x\.(weight|bias)$"), r"mlp.w2.\1"),
    (re.compile(r"^mlp\.fc1\.(weight|bias)$"), r"mlp.w12.\1"),
    (re.compile(r"^mlp\.norm\.(weight|bias)$"), r"mlp.ffn_ln.\1"),
    (re.compile(r"^mlp\.fc2\.(weight|bias)$"), r"mlp.w3.\1"),
]

# eva_det (EVA-02) name -> timm name, for blocks with separate q/k/v projections.
_EVA02_TO_TIMM = [
    (re.compile(r"^attn\.q_bias$"), "attn.q_proj.bias"),
    (re.compile(r"^attn\.v_bias$"), "attn.v_proj.bias"),
    (re.compile(r"^mlp\.w1\.(weight|bias)$"), r"mlp.fc1_g.\1"),
    (re.compile(r"^mlp\.w2\.(weight|bias)$"), r"mlp.fc1_x.\1"),
    (re.compile(r"^mlp\.ffn_ln\.(weight|bias)$"), r"mlp.norm.\1"),
    (re.compile(r"^mlp\.w3\.(weight|bias)$"), r"mlp.fc2.\1"),
]

_BLOCK_NAME = re.compile(r"^(.*?blocks\.\d+\.)(.+)$")


def _rename_block_keys(
    state_dict: dict[str, torch.Tensor], rules: list[tuple[re.Pattern[str], str]]
) -> dict[str, torch.Tensor]:
    """Apply the first matching ``rules`` entry to the in-block part of every key."""
    out = {}
    for key, value in state_dict.items():
        match = _BLOCK_NAME.match(key)
        if match:
            head, name = match.groups()
            for pattern, replacement in rules:
                if pattern.match(name):
                    key = head + pattern.sub(replacement, name)
                    break
        out[key] = value
    return out


def timm_eva02_to_eva02(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm ``Eva`` (EVA-02 weights) state dict to the official EVA-02 names.

    Only names change (see the module docstring); tensors are the same objects. Keys outside the
    blocks (``pos_embed``, ``patch_embed``, ``rope``...) and any prefix are kept as they are.
    """
    return _rename_block_keys(state_dict, _TIMM_TO_OFFICIAL)


def _convert_block(
    index: int, block: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
) -> None:
    """Convert one EVA-02 block's attention inputs and MLP (official names in, target names out)."""
    if "attn.qkv.weight" in block:
        # Fused (Ti/S, timm): rows are q, k, v; the detector has separate projections.
        q, k, v = split_qkv(block.pop("attn.qkv.weight"))
    else:
        q, k, v = (take(block, f"attn.{n}_proj.weight", index) for n in ("q", "k", "v"))
    out["attn.q_proj.weight"], out["attn.k_proj.weight"], out["attn.v_proj.weight"] = q, k, v
    for name in ("attn.q_bias", "attn.v_bias"):
        if name in block:
            out[name] = block.pop(name)
        else:  # trained without this bias: zero bias is the same model
            logger.info("Block %d has no %s; writing zeros (exact).", index, name)
            out[name] = q.new_zeros(q.shape[0])

    if "mlp.w12.weight" in block:
        # Packed SwiGLU: the first half of the rows is the SiLU gate (w1), the second half w2.
        for part in ("weight", "bias"):
            w1, w2 = take(block, f"mlp.w12.{part}", index).chunk(2, dim=0)
            out[f"mlp.w1.{part}"], out[f"mlp.w2.{part}"] = w1, w2
    else:
        for name in ("mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias"):
            out[name] = take(block, name, index)
    if "mlp.ffn_ln.weight" in block:
        out["mlp.ffn_ln.weight"] = block.pop("mlp.ffn_ln.weight")
        out["mlp.ffn_ln.bias"] = take(block, "mlp.ffn_ln.bias", index)
    elif index == 0:
        logger.info("Block 0 has no mlp.ffn_ln: EVA-02 Ti/S layout (no SwiGLU sub-LN).")
    for name in ("mlp.w3.weight", "mlp.w3.bias"):
        out[name] = take(block, name, index)


_TARGET_MLP_OUT = re.compile(r"^" + re.escape(TARGET_PREFIX) + r"blocks\.(\d+)\.mlp\.w3\.weight$")


def eva02_model_settings(state_dict: dict[str, torch.Tensor]) -> dict[str, bool] | None:
    """The ``EVA02ViT`` arguments a converted EVA-02 backbone needs (None if it is no EVA-02).

    Args:
        state_dict (dict[str, Tensor]): converted tensors (``backbone.net.*``).

    Returns:
        dict or None: ``{"subln": bool}``: whether the SwiGLU sub-LN ``mlp.ffn_ln`` is present
        (B/L: ``model.backbone.net.subln=True``, the default; Ti/S: ``subln=False``).

    Raises:
        ValueError: some blocks have the sub-LN and others not.
    """
    blocks = [m.group(1) for m in map(_TARGET_MLP_OUT.match, state_dict) if m]
    if not blocks:
        return None
    with_ln = [b for b in blocks if f"{TARGET_PREFIX}blocks.{b}.mlp.ffn_ln.weight" in state_dict]
    if len(with_ln) not in (0, len(blocks)):
        raise ValueError(
            f"{len(with_ln)} of {len(blocks)} EVA-02 blocks have mlp.ffn_ln (sub-LN) and the "
            "others not: EVA-02 files have it in all blocks (B/L) or none (Ti/S). The file is "
            "damaged or mixes two models."
        )
    return {"subln": bool(with_ln)}


def convert_eva02(
    state_dict: dict[str, torch.Tensor],
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
) -> ConversionResult:
    """Convert an official EVA-02 backbone (e.g. ``eva02_L_pt_m38m_p14to16.pt``) to eva_det names.

    Renames ``X`` -> ``backbone.net.X`` for the stem, norms, attention and MLP tensors (the
    ``*_p14to16`` files already have a 16x16 kernel and a 1 + 14*14 pos_embed; a patch-14 file is
    resized like :func:`eva_det.checkpoint.convert_eva01.convert_eva01` does), splits a fused
    ``qkv.weight`` and a packed ``w12``; drops rotary buffers, ``cls_token``, ``mask_token``,
    ``lm_head``, the final norm, and LayerScale unless ``keep_gamma``.

    Args:
        state_dict (dict[str, Tensor]): source tensors, container already unwrapped.
        patch_size (int): target patch size.
        pretrain_img_size (int): image size the target pos_embed describes.
        keep_gamma (bool): keep LayerScale as ``backbone.net.blocks.i.gamma_{1,2}``.
        prefix (str or None): the ViT's key prefix; ``None`` to infer it.

    Returns:
        ConversionResult: ``(state_dict, dropped)``.
    """
    return run_conversion(
        state_dict,
        _convert_block,
        patch_size=patch_size,
        pretrain_img_size=pretrain_img_size,
        keep_gamma=keep_gamma,
        prefix=prefix,
    )


def convert_timm_eva02(
    state_dict: dict[str, torch.Tensor],
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
) -> ConversionResult:
    """Convert a timm ``Eva`` state dict holding EVA-02 weights to eva_det names.

    :func:`timm_eva02_to_eva02` undoes timm's renames, then :func:`convert_eva02` runs. Dropped
    keys are reported under their official EVA-02 names (e.g. ``mlp.w12``, not ``mlp.fc1``).
    """
    return convert_eva02(
        timm_eva02_to_eva02(state_dict),
        patch_size=patch_size,
        pretrain_img_size=pretrain_img_size,
        keep_gamma=keep_gamma,
        prefix=prefix,
    )


def eva02_to_timm(state_dict: dict[str, torch.Tensor]) -> ConversionResult:
    """Map eva_det's EVA-02 backbone names back to timm ``Eva`` names (inverse of the above).

    Keeps the ``backbone.net.`` tensors, strips that prefix and renames ``q_bias`` ->
    ``q_proj.bias``, ``v_bias`` -> ``v_proj.bias``, ``w1`` -> ``fc1_g``, ``w2`` -> ``fc1_x``,
    ``ffn_ln`` -> ``norm``, ``w3`` -> ``fc2``. The separate q/k/v projections stay separate (timm's
    ``qkv_fused=False`` EVA-02 B/L). Everything outside ``backbone.net.`` (detector heads), and the
    detector-only ``rel_pos_*`` / ``rope*`` tensors, is dropped. Shapes are unchanged: timm resizes
    ``pos_embed`` and the patch kernel itself when its model differs.

    Args:
        state_dict (dict[str, Tensor]): eva_det detector or converted backbone tensors.

    Returns:
        ConversionResult: timm-named tensors and the dropped keys with reasons.
    """
    kept: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    for key, value in state_dict.items():
        if not key.startswith(TARGET_PREFIX):
            dropped[key] = "not part of the ViT backbone"
        elif re.search(r"(^|\.)(rel_pos_[hw]|rope\w*)(\.|$)", key):
            dropped[key] = "detector-only position table; timm computes its own"
        else:
            kept[key[len(TARGET_PREFIX) :]] = value
    return ConversionResult(_rename_block_keys(kept, _EVA02_TO_TIMM), dropped)
