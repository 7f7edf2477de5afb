"""EVA-01 (and timm ``Eva`` with EVA-01 weights) pretrained backbone -> eva_det detector names.

Source layouts handled (names relative to the ViT, after any ``visual.`` / ``encoder.`` prefix):

* BEiT-style EVA-01 (``EVA-01/eva/modeling_finetune.py``, the 1B ``eva_psz14`` MIM and EVA-CLIP
  vision towers): ``blocks.i.attn.qkv.weight`` without bias plus ``attn.q_bias`` / ``attn.v_bias``,
  ``mlp.fc1`` / ``mlp.fc2``. timm's ``Eva`` keeps exactly these names (its ``k_bias`` is a
  non-persistent buffer, never saved), so ``timm_eva`` files go through the same code.
* MAE-style EVA-L (``EVA-01/eva/modeling_mae_pretrain.py``): ``attn.qkv`` with a full bias.
* Separate ``attn.{q,k,v}_proj.weight`` (with ``q_bias``/``v_bias`` or ``q_proj.bias``/
  ``v_proj.bias``): fused into one ``qkv.weight``.

Target (``backbone.net.`` + ...): ``pos_embed`` (1, 1 + 14*14, C), ``patch_embed.proj.*`` with a
16x16 kernel, ``blocks.i.{norm1,norm2}.*``, ``blocks.i.attn.{qkv.weight,q_bias,v_bias,proj.*}``,
``blocks.i.mlp.{fc1,fc2}.*``. The detector's ``rel_pos_h``/``rel_pos_w`` are not produced: they
are new, zero-initialised parameters that no pretrained file has.
"""

from __future__ import annotations

import logging

import torch

from .convert_common import ConversionResult, fuse_qkv, run_conversion, split_qkv, take

logger = logging.getLogger(__name__)

__all__ = ["convert_eva01"]


def _convert_block(
    index: int, block: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
) -> None:
    """Convert one EVA-01 block's attention inputs and MLP (see the module docstring)."""
    q_bias = v_bias = None
    if "attn.qkv.weight" in block:
        qkv = block.pop("attn.qkv.weight")  # already the target layout: rows q, k, v
    else:
        # Separate projections: stack them in the order the fused layer expects.
        qkv = fuse_qkv(
            take(block, "attn.q_proj.weight", index),
            take(block, "attn.k_proj.weight", index),
            take(block, "attn.v_proj.weight", index),
        )
        q_bias = block.pop("attn.q_proj.bias", None)
        v_bias = block.pop("attn.v_proj.bias", None)
        # a k_proj.bias is left in `block` and reported as dropped (exact, see drop_reason).
    if "attn.qkv.bias" in block:
        # MAE-style full qkv bias: keep the q and v slices. The k slice only adds q.b_k to every
        # logit of a query, a constant that softmax removes, so dropping it is exact.
        q_bias, _, v_bias = split_qkv(block.pop("attn.qkv.bias"))
        if index == 0:
            logger.info("Splitting qkv.bias into q_bias/v_bias; the k part is dropped (exact).")
    q_bias = block.pop("attn.q_bias", q_bias)
    v_bias = block.pop("attn.v_bias", v_bias)
    if q_bias is None or v_bias is None:
        # A model trained without q/v bias equals one with zero bias.
        if index == 0:
            logger.info("No q/v bias in the checkpoint; writing zeros (exact).")
        zeros = qkv.new_zeros(qkv.shape[0] // 3)
        q_bias = zeros if q_bias is None else q_bias
        v_bias = zeros.clone() if v_bias is None else v_bias
    out["attn.qkv.weight"] = qkv
    out["attn.q_bias"] = q_bias
    out["attn.v_bias"] = v_bias
    for name in ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
        out[name] = take(block, name, index)


def convert_eva01(
    state_dict: dict[str, torch.Tensor],
    *,
    patch_size: int = 16,
    pretrain_img_size: int = 224,
    keep_gamma: bool = False,
    prefix: str | None = None,
) -> ConversionResult:
    """Convert an EVA-01 / timm ``Eva`` (EVA-01 weights) backbone to eva_det's detector names.

    Renames ``X`` -> ``backbone.net.X`` for the stem, norms, attention and MLP tensors; resizes a
    14x14 patch kernel to ``patch_size`` and the pos_embed grid (16x16 at 224/14) to
    ``pretrain_img_size // patch_size`` with bicubic interpolation, as the official
    ``interpolate_patch_14to16.py`` did for ``eva_psz14to16.pt``; fuses separate q/k/v weights and
    splits a full qkv bias (see the module docstring). ``cls_token``, ``mask_token``, heads, the
    final norm and BEiT relative-position tables are dropped; LayerScale ``gamma_1``/``gamma_2``
    too unless ``keep_gamma`` (the EVA-01 1B has none).

    Args:
        state_dict (dict[str, Tensor]): source tensors, container already unwrapped.
        patch_size (int): target patch size.
        pretrain_img_size (int): image size the target pos_embed describes.
        keep_gamma (bool): keep LayerScale as ``backbone.net.blocks.i.gamma_{1,2}``.
        prefix (str or None): the ViT's key prefix (``"visual."``...); ``None`` to infer it.

    Returns:
        ConversionResult: ``(state_dict, dropped)``; ``dropped`` maps each left-out source key to
        the reason.
    """
    return run_conversion(
        state_dict,
        _convert_block,
        patch_size=patch_size,
        pretrain_img_size=pretrain_img_size,
        keep_gamma=keep_gamma,
        prefix=prefix,
    )
