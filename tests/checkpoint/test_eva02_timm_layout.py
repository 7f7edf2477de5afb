"""EVA-02 Ti/S layout (fused qkv, packed SwiGLU w12, no sub-LN): conversion equals timm's model.

A tiny timm ``Eva`` with random weights is built as timm builds ``eva02_tiny_patch14_224`` /
``eva02_small_patch14_224`` (fused qkv with q/v bias, ``swiglu_mlp=True`` without ``scale_mlp``:
a packed ``fc1``, no MLP norm), but with patch 16 (no kernel resizing) and without class token
(which attends with the patches in timm and has no counterpart in a detector). Its converted
weights in ``EVA02ViT(subln=False)`` must give timm's last-block features; the B/L layout
(separate q/k/v, sub-LN) is checked the same way with ``subln=True``.
"""

import logging
import os

import pytest
import torch
from detectron2.config import instantiate
from helpers.shrink import REPO, load_config, shrink_overrides

from eva_det.checkpoint import convert_file, convert_pretrained, eva02_model_settings
from eva_det.config.load import load_config as cli_load_config
from eva_det.errors import InputError
from eva_det.modeling.backbone.eva02_vit import EVA02ViT

timm_eva = pytest.importorskip("timm.models.eva")

DIM, DEPTH, HEADS, IMG, PATCH = 64, 2, 4, 64, 16
PREFIX = "backbone.net."


def _timm_eva02(layout: str):
    """A random-weight timm Eva, float64; layout "ti_s" (eva02_tiny/small) or "b_l" (base/large)."""
    torch.manual_seed(0)
    extra = dict(qkv_fused=False, scale_mlp=True) if layout == "b_l" else {}
    model = timm_eva.Eva(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        mlp_ratio=4 * 2 / 3,
        swiglu_mlp=True,
        use_rot_pos_emb=True,
        ref_feat_shape=(16, 16),  # as timm's EVA-02 (pt_hw_seq_len=16)
        class_token=False,
        num_classes=0,
        **extra,
    )
    with torch.no_grad():  # random biases and norms too, so every tensor matters
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.double().eval()


def _eva02(subln: bool):
    return EVA02ViT(
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        pretrain_img_size=IMG,
        subln=subln,
    ).double()


def _backbone_part(state_dict):
    return {k[len(PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PREFIX)}


@pytest.mark.parametrize("layout, subln", [("ti_s", False), ("b_l", True)])
def test_converted_model_computes_timms_function(layout, subln):
    reference = _timm_eva02(layout)
    source = reference.state_dict()
    if layout == "ti_s":
        assert "blocks.0.attn.qkv.weight" in source and "blocks.0.mlp.fc1.weight" in source
        assert not any(".mlp.norm." in k for k in source)
    converted, _ = convert_pretrained(source, "auto", pretrain_img_size=IMG)
    assert eva02_model_settings(converted) == {"subln": subln}
    model = _eva02(subln)
    model.load_state_dict(_backbone_part(converted), strict=True)
    model.eval()
    x = torch.randn(2, 3, IMG, IMG, dtype=torch.float64)
    with torch.no_grad():
        ours = model(x)["last_feat"]  # (B, C, h, w)
        ref = reference.forward_intermediates(x, indices=1, norm=False, intermediates_only=True)
    ref = ref[-1]  # (B, C, h, w): the last block, before timm's final norm
    assert ours.shape == ref.shape == (2, DIM, IMG // PATCH, IMG // PATCH)
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err < 1e-10, float(err)


@pytest.mark.parametrize("layout, subln", [("ti_s", True), ("b_l", False)])
def test_other_sub_ln_layout_is_refused(layout, subln):
    converted, _ = convert_pretrained(_timm_eva02(layout).state_dict(), "auto")
    with pytest.raises(InputError) as info:
        _eva02(subln).load_state_dict(_backbone_part(converted), strict=False)
    message = str(info.value)
    assert f"model was built with subln={subln}" in message
    assert f"set model.backbone.net.subln={not subln}" in message


def test_mixed_sub_ln_is_refused():
    converted, _ = convert_pretrained(_timm_eva02("b_l").state_dict(), "auto")
    del converted[PREFIX + "blocks.1.mlp.ffn_ln.weight"]
    with pytest.raises(ValueError, match="1 of 2 EVA-02 blocks have mlp.ffn_ln"):
        eva02_model_settings(converted)
    with pytest.raises(InputError, match="1 of 2 blocks have a SwiGLU sub-LN"):
        _eva02(True).load_state_dict(_backbone_part(converted), strict=False)


def test_converter_says_which_setting_the_file_needs(tmp_path, caplog):
    src, out = tmp_path / "eva02_tiny.pth", tmp_path / "det.pth"
    torch.save(_timm_eva02("ti_s").state_dict(), src)
    with caplog.at_level(logging.INFO, logger="eva_det.checkpoint"):
        convert_file(str(src), str(out))
    assert "EVA-02 Ti/S, without SwiGLU sub-LN (mlp.ffn_ln)" in caplog.text
    assert f"{out} with model.backbone.net.subln=False." in caplog.text


def test_subln_is_a_config_key_with_the_released_default():
    relpath = os.path.join(
        REPO,
        "projects/ViTDet/configs/eva2_mim_to_coco",
        "eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py",
    )
    shrink = shrink_overrides(load_config(relpath))
    default = instantiate(load_config(relpath, shrink).model.backbone.net)
    assert default.subln and "blocks.0.mlp.ffn_ln.weight" in default.state_dict()
    # the CLI's override check accepts the key
    cfg = cli_load_config(relpath, shrink + ["model.backbone.net.subln=False"])
    tiny = instantiate(cfg.model)
    assert not any("ffn_ln" in k for k in tiny.state_dict())
