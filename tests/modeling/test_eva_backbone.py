"""EVA-01 ViT: shapes, windows, activation checkpointing, SDPA vs plain, rel-pos resizing, names."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.utils import window_partition, window_unpartition
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from eva_det.modeling.backbone.eva_vit import EVAViT
from eva_det.modeling.backbone.rel_pos import beit_source_offsets, get_rel_pos, resize_rel_pos

TINY = dict(
    img_size=128,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=4,
    window_block_indexes=[0, 1, 3],
    use_rel_pos=True,
    rel_pos_zero_init=False,
)


def _tiny(**kw):
    torch.manual_seed(0)
    args = dict(TINY)
    args.update(kw)
    return EVAViT(**args)


@pytest.mark.parametrize("hw", [(128, 128), (160, 96), (48, 80), (208, 144)])
def test_output_shapes_for_odd_sizes(hw):
    m = _tiny().eval()
    out = m(torch.randn(1, 3, *hw))["last_feat"]
    assert out.shape == (1, 64, hw[0] // 16, hw[1] // 16)
    assert torch.isfinite(out).all()
    assert m.output_shape()["last_feat"].stride == 16


@pytest.mark.parametrize("hw,ws", [((8, 8), 4), ((7, 5), 4), ((9, 13), 3)])
def test_window_partition_round_trip(hw, ws):
    x = torch.randn(2, *hw, 6)
    windows, pad_hw = window_partition(x, ws)
    assert windows.shape[1:3] == (ws, ws)
    assert pad_hw[0] % ws == 0 and pad_hw[1] % ws == 0
    assert torch.equal(window_unpartition(windows, ws, pad_hw, hw), x)


def _plain_reference_attention(attn_module, x):
    """Independent formulation: explicit loops over heads, bias from get_rel_pos tables."""
    B, H, W, C = x.shape
    nh = attn_module.num_heads
    hd = C // nh
    bias = torch.cat((attn_module.q_bias, torch.zeros_like(attn_module.v_bias), attn_module.v_bias))
    qkv = F.linear(x.reshape(B, H * W, C), attn_module.qkv.weight, bias)
    q, k, v = qkv.split(C, dim=-1)
    Rh = get_rel_pos(H, H, attn_module.rel_pos_h, attn_module.interp_type)  # (H, H, hd)
    Rw = get_rel_pos(W, W, attn_module.rel_pos_w, attn_module.interp_type)
    outs = []
    for h in range(nh):
        qh, kh, vh = (t[..., h * hd : (h + 1) * hd] for t in (q, k, v))
        logits = (qh * hd**-0.5) @ kh.transpose(-1, -2)  # (B, N, N)
        rq = qh.reshape(B, H, W, hd)
        rel = (
            torch.einsum("bijc,ikc->bijk", rq, Rh)[..., :, None]
            + torch.einsum("bijc,jlc->bijl", rq, Rw)[..., None, :]
        )
        logits = logits + rel.reshape(B, H * W, H * W)
        outs.append(logits.softmax(-1) @ vh)
    out = torch.cat(outs, dim=-1).reshape(B, H, W, C)
    return attn_module.proj(out)


@pytest.mark.parametrize("impl", ["plain", "sdpa", "blocked"])
@pytest.mark.parametrize("interp", ["vitdet", "beit"])
def test_attention_matches_independent_reference(impl, interp):
    m = _tiny(attn_impl=impl, interp_type=interp)
    attn = m.blocks[2].attn  # global block sized for 8x8 tokens
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
    x = torch.randn(2, 6, 10, 64)  # grid differs from 8x8: tables get resized
    torch.testing.assert_close(attn(x), _plain_reference_attention(attn, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["sdpa", "blocked"])
@pytest.mark.parametrize("hw", [(128, 128), (144, 112)])
def test_fast_attention_equals_plain_values_and_grads(hw, impl):
    x = torch.randn(2, 3, *hw)
    outs, grads = [], []
    for impl in ["plain", impl]:
        m = _tiny(attn_impl=impl).train()
        y = m(x)["last_feat"]
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_identical(every):
    x = torch.randn(1, 3, 96, 128)
    ref = _tiny(drop_path_rate=0.0).train()
    ckp = _tiny(drop_path_rate=0.0, use_act_checkpoint=True, act_checkpoint_every=every).train()
    assert list(ref.state_dict()) == list(ckp.state_dict())
    ya, yb = ref(x)["last_feat"], ckp(x)["last_feat"]
    ya.sum().backward()
    yb.sum().backward()
    assert torch.equal(ya, yb)
    for (n, pa), (_, pb) in zip(ref.named_parameters(), ckp.named_parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_freeze_patch_embed_and_drop_path_train_eval():
    m = _tiny(freeze_patch_embed=True, drop_path_rate=0.5)
    assert not any(p.requires_grad for p in m.patch_embed.parameters())
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    assert torch.equal(m(x)["last_feat"], m(x)["last_feat"])  # deterministic at eval


def test_beit_resize_matches_scipy_cubic_spline():
    interpolate = pytest.importorskip("scipy.interpolate")
    torch.manual_seed(1)
    for src, dst in [(15, 19), (31, 39), (31, 63), (63, 95), (31, 19)]:
        table = torch.randn(src, 8)
        ours = resize_rel_pos(table, dst, "beit")
        # BEiT's geometric source positions, built independently of the library helper.
        q, cur, dis = 1.0903078, 1.0, []
        for i in range(src // 2):
            dis.append(cur)
            cur += q ** (i + 1)
        x = np.array([-d for d in reversed(dis)] + [0.0] + dis)
        assert np.allclose(beit_source_offsets(src).numpy(), x)
        t = dst // 2
        dx = np.arange(-t, t + 0.1, 1.0)
        ref = np.stack(
            [
                interpolate.interp1d(
                    x, table[:, c].numpy(), kind="cubic", fill_value="extrapolate"
                )(dx)
                for c in range(8)
            ],
            axis=1,
        )
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_vitdet_resize_matches_linear_interpolation():
    table = torch.randn(7, 5)
    ours = resize_rel_pos(table, 15, "vitdet")
    # align_corners=False linear interpolation computed by hand
    src = (torch.arange(15, dtype=torch.float64) + 0.5) * 7 / 15 - 0.5
    src = src.clamp(0, 6)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=6)
    w = (src - lo).unsqueeze(1)
    ref = table.double()[lo] * (1 - w) + table.double()[hi] * w
    torch.testing.assert_close(ours.double(), ref, atol=1e-6, rtol=1e-6)
    assert resize_rel_pos(table, 7, "vitdet") is table


def test_unknown_interp_type_is_rejected():
    with pytest.raises(ValueError, match="interp_type"):
        _tiny(interp_type="bilinear")
    with pytest.raises(ValueError, match="block indexes"):
        _tiny(window_block_indexes=[7])


def test_state_dict_names_follow_official_layout():
    m = _tiny(depth=2, window_block_indexes=[0])
    names = set(m.state_dict())
    expected = {"pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i in range(2):
        p = f"blocks.{i}."
        expected |= {p + f"{n}.{w}" for n in ("norm1", "norm2") for w in ("weight", "bias")}
        expected |= {
            p + "attn." + n
            for n in (
                "q_bias",
                "v_bias",
                "qkv.weight",
                "proj.weight",
                "proj.bias",
                "rel_pos_h",
                "rel_pos_w",
            )
        }
        expected |= {p + f"mlp.{fc}.{w}" for fc in ("fc1", "fc2") for w in ("weight", "bias")}
    assert names == expected
    assert m.pos_embed.shape == (1, 1 + 14 * 14, 64)
    assert m.blocks[0].attn.rel_pos_h.shape == (2 * 4 - 1, 16)  # windowed: 2*window-1
    assert m.blocks[1].attn.rel_pos_h.shape == (2 * 8 - 1, 16)  # global: 2*(128/16)-1


def test_layerwise_lr_decay_values():
    assert get_vit_lr_decay_rate("backbone.net.pos_embed", 0.9, 40) == pytest.approx(0.9**41)
    assert get_vit_lr_decay_rate("backbone.net.patch_embed.proj.weight", 0.9, 40) == pytest.approx(
        0.9**41
    )
    assert get_vit_lr_decay_rate("backbone.net.blocks.0.attn.qkv.weight", 0.9, 40) == pytest.approx(
        0.9**40
    )
    assert get_vit_lr_decay_rate("backbone.net.blocks.39.mlp.fc1.weight", 0.9, 40) == pytest.approx(
        0.9
    )
    assert get_vit_lr_decay_rate("backbone.simfp_2.0.weight", 0.9, 40) == 1.0
    assert get_vit_lr_decay_rate("roi_heads.box_head.0.fc1.weight", 0.9, 40) == 1.0


def test_yacs_config_can_name_the_backbone():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from eva_det.modeling.backbone import add_eva_vit_config

    cfg = get_cfg()
    add_eva_vit_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_eva_vit_sfp_backbone"
    v = cfg.MODEL.EVA_VIT
    v.IMG_SIZE, v.EMBED_DIM, v.DEPTH, v.NUM_HEADS, v.WINDOW_SIZE = 128, 64, 2, 4, 4
    v.WINDOW_BLOCK_INDEXES = [0]
    cfg.MODEL.EVA_SFP.SQUARE_PAD = 128
    backbone = build_backbone(cfg)
    feats = backbone(torch.randn(1, 3, 128, 128))
    assert list(feats) == ["p2", "p3", "p4", "p5", "p6"]
    assert feats["p2"].shape == (1, 256, 32, 32) and feats["p6"].shape == (1, 256, 2, 2)
    assert backbone.padding_constraints["square_size"] == 128
