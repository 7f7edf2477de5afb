"""EVA-02 ViT backbone: rotary embedding, attention paths, input sizes, checkpointing, state dicts.

References are computed here from the formulas (complex-number rotations in float64, explicit
softmax attention), not with the module code.
"""

import logging
import math

import pytest
import torch
from torch import nn

from eva_det.errors import InputError
from eva_det.modeling.backbone.eva02_vit import Attention, Block, EVA02ViT
from eva_det.modeling.backbone.rope import VisionRotaryEmbedding2D, rope_cos_sin

TINY = dict(
    img_size=128,
    patch_size=16,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=4,
    window_block_indexes=[0, 1, 3],
)
LOGGER = "eva_det.modeling.backbone.eva02_vit"


def ref_angles(h, w, head_dim, pt_seq_len=16, intp_freq=True):
    """(h*w, head_dim/2) float64 rotation angle of each complex pair, from the EVA-02 formula."""
    d = head_dim // 2  # channels per axis; d/2 frequencies, pair j uses frequency j
    freqs = torch.tensor([10000.0 ** (-2 * j / d) for j in range(d // 2)], dtype=torch.float64)
    pos_h = torch.arange(h, dtype=torch.float64) * ((pt_seq_len / h) if intp_freq else 1.0)
    pos_w = torch.arange(w, dtype=torch.float64) * ((pt_seq_len / w) if intp_freq else 1.0)
    ang = torch.empty(h, w, d, dtype=torch.float64)
    ang[:, :, : d // 2] = pos_h[:, None, None] * freqs  # first half of the pairs: row position
    ang[:, :, d // 2 :] = pos_w[None, :, None] * freqs  # second half: column position
    return ang.reshape(h * w, d)


def ref_rotate(t, h, w, **kw):
    """Rotate (..., h*w, D) as complex numbers t[2j] + i t[2j+1] by exp(i * angle)."""
    z = torch.view_as_complex(t.double().reshape(*t.shape[:-1], -1, 2).contiguous())
    z = z * torch.polar(torch.ones(()).double(), ref_angles(h, w, t.shape[-1], **kw))
    return torch.view_as_real(z).reshape(t.shape)


def ref_official_rope_buffers(n, head_dim):
    """(n*n, head_dim) float32 cos/sin tables of a square grid, laid out as official buffers."""
    ang = ref_angles(n, n, head_dim).repeat_interleave(
        2, dim=-1
    )  # each angle for both pair members
    return ang.cos().float(), ang.sin().float()


@pytest.mark.parametrize("h,w,head_dim", [(8, 8, 16), (3, 5, 16), (16, 16, 64), (5, 2, 24)])
def test_rope_matches_complex_rotation(h, w, head_dim):
    torch.manual_seed(0)
    t = torch.randn(2, 3, h * w, head_dim)
    rope = VisionRotaryEmbedding2D(head_dim)
    torch.testing.assert_close(rope(t, (h, w)).double(), ref_rotate(t, h, w), atol=1e-5, rtol=0)
    ang = ref_angles(h, w, head_dim).repeat_interleave(2, dim=-1)
    cos, sin = rope_cos_sin(h, w, head_dim)
    assert cos.shape == sin.shape == (h * w, head_dim) and cos.dtype == torch.float32
    torch.testing.assert_close(cos.double(), ang.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(sin.double(), ang.sin(), atol=1e-5, rtol=0)


def test_rope_without_interpolation_uses_token_index():
    t = torch.randn(1, 1, 6 * 4, 16)
    out = VisionRotaryEmbedding2D(16, intp_freq=False)(t, (6, 4))
    torch.testing.assert_close(
        out.double(), ref_rotate(t, 6, 4, intp_freq=False), atol=1e-5, rtol=0
    )


def test_rope_cache_and_dtype():
    rope = VisionRotaryEmbedding2D(16, max_cached=2)
    assert rope.state_dict() == {}
    first = rope.cos_sin((4, 4), torch.device("cpu"))
    assert rope.cos_sin((4, 4), torch.device("cpu"))[0] is first[0]  # cached
    rope.cos_sin((3, 5), torch.device("cpu"))
    rope.cos_sin((5, 3), torch.device("cpu"))
    assert list(rope._cache) == [(3, 5, torch.device("cpu")), (5, 3, torch.device("cpu"))]
    # Half-precision inputs are rotated in float32 and cast back.
    t = torch.randn(1, 2, 12, 16)
    out = rope(t.bfloat16(), (3, 4))
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, rope(t.bfloat16().float(), (3, 4)).bfloat16())
    with pytest.raises(ValueError, match="divisible by 4"):
        VisionRotaryEmbedding2D(18)


def test_attention_matches_reference():
    torch.manual_seed(0)
    B, H, W, C, heads = 2, 3, 5, 32, 2
    attn = Attention(C, heads, rope=VisionRotaryEmbedding2D(C // heads))
    nn.init.normal_(attn.q_bias)
    nn.init.normal_(attn.v_bias)
    x = torch.randn(B, H, W, C)
    out = attn(x)

    # Reference in float64: q/v biases, no k bias, RoPE on q and k, softmax(q k^T / sqrt(d)) v.
    p = {k: v.double() for k, v in attn.state_dict().items()}
    xs = x.double().reshape(B, H * W, C)
    q = xs @ p["q_proj.weight"].T + p["q_bias"]
    k = xs @ p["k_proj.weight"].T
    v = xs @ p["v_proj.weight"].T + p["v_bias"]
    q, k, v = (t.reshape(B, H * W, heads, -1).transpose(1, 2) for t in (q, k, v))
    q, k = ref_rotate(q, H, W), ref_rotate(k, H, W)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    ref = (a @ v).transpose(1, 2).reshape(B, H * W, C) @ p["proj.weight"].T + p["proj.bias"]
    torch.testing.assert_close(out.double(), ref.reshape(B, H, W, C), atol=1e-5, rtol=0)


@pytest.mark.parametrize("window_size", [0, 4])
def test_sdpa_equals_plain_with_padding(window_size):
    torch.manual_seed(0)
    rope = VisionRotaryEmbedding2D(16)
    blocks = {
        impl: Block(64, 4, window_size=window_size, rope=rope, attn_impl=impl)
        for impl in ("sdpa", "plain")
    }
    for p in blocks["sdpa"].parameters():
        nn.init.normal_(p, std=0.2)
    blocks["plain"].load_state_dict(blocks["sdpa"].state_dict())
    x0 = torch.randn(2, 7, 5, 64)  # 7 x 5 grid: windows of 4 need padding
    g = torch.randn(2, 7, 5, 64)
    outs, grads = {}, {}
    for impl, blk in blocks.items():
        x = x0.clone().requires_grad_()
        outs[impl] = blk(x)
        (outs[impl] * g).sum().backward()
        grads[impl] = [x.grad] + [p.grad for p in blk.parameters()]
    torch.testing.assert_close(outs["sdpa"], outs["plain"], atol=1e-5, rtol=0)
    assert len(grads["sdpa"]) == 1 + 19  # input + every parameter
    for gs, gp in zip(grads["sdpa"], grads["plain"]):
        # Gradients reach ~50 here: atol 1e-5 relative to each tensor's largest entry.
        torch.testing.assert_close(gs, gp, atol=1e-5 * gp.abs().max().item(), rtol=0)


@pytest.mark.parametrize("hw", [(128, 128), (96, 160), (112, 80), (256, 192)])
def test_any_input_size(hw):
    torch.manual_seed(0)
    model = EVA02ViT(**TINY)
    x = torch.randn(2, 3, *hw, requires_grad=True)
    feat = model(x)["last_feat"]
    assert feat.shape == (2, 64, hw[0] // 16, hw[1] // 16)
    feat.mean().backward()
    assert torch.isfinite(x.grad).all()
    # Windowed blocks use the (4, 4) table, global blocks the table of the whole grid.
    assert {k[:2] for k in model.rope._cache} == {(4, 4), (hw[0] // 16, hw[1] // 16)}
    spec = model.output_shape()["last_feat"]
    assert (spec.channels, spec.stride) == (64, 16)


def test_act_checkpoint_same_outputs_grads_and_names():
    cfg = dict(TINY, drop_path_rate=0.3)
    torch.manual_seed(0)
    plain = EVA02ViT(**cfg).train()
    ckpt = EVA02ViT(**cfg, use_act_checkpoint=True).train()
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    x0 = torch.randn(2, 3, 96, 128)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same drop-path draws
        x = x0.clone().requires_grad_()
        out = model(x)["last_feat"]
        out.square().mean().backward()
        results.append([out, x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def official_names(depth):
    """State-dict names of the official EVA-02 ViT without its RoPE buffers."""
    names = ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    per_block = [
        "norm1.weight", "norm1.bias",
        "attn.q_bias", "attn.v_bias",
        "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
        "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias",
        "mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias",
        "mlp.ffn_ln.weight", "mlp.ffn_ln.bias", "mlp.w3.weight", "mlp.w3.bias",
    ]  # fmt: skip
    return names + [f"blocks.{i}.{n}" for i in range(depth) for n in per_block]


def test_state_dict_names_match_official():
    sd = EVA02ViT(**TINY).state_dict()
    assert sorted(sd) == sorted(official_names(4))
    hidden = int(64 * 4 * 2 / 3)
    assert sd["pos_embed"].shape == (1, 1 + 14 * 14, 64)  # pretrain_img_size 224, cls slot
    assert sd["blocks.0.mlp.w1.weight"].shape == (hidden, 64)
    assert sd["blocks.0.mlp.ffn_ln.weight"].shape == (hidden,)
    assert sd["blocks.0.mlp.w3.weight"].shape == (64, hidden)
    assert sd["blocks.0.attn.q_bias"].shape == (64,)


def official_style_state_dict(model):
    """``model``'s state dict plus the RoPE buffers an official checkpoint of it would carry."""
    sd = dict(model.state_dict())
    win, glb = ref_official_rope_buffers(4, 16), ref_official_rope_buffers(8, 16)  # 128 / 16 = 8
    for name, (cos, sin) in {"rope_win": win, "rope_glb": glb}.items():
        sd[f"{name}.freqs_cos"], sd[f"{name}.freqs_sin"] = cos, sin
    for i in range(TINY["depth"]):
        cos, sin = win if i in TINY["window_block_indexes"] else glb
        sd[f"blocks.{i}.attn.rope.freqs_cos"], sd[f"blocks.{i}.attn.rope.freqs_sin"] = cos, sin
    return sd


class Detector(nn.Module):
    """Puts the ViT at ``backbone.net`` like a detectron2 ViTDet model."""

    def __init__(self, net):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = net


def test_load_official_state_dict_strict_drops_rope_buffers(caplog):
    torch.manual_seed(0)
    src = EVA02ViT(**TINY)
    sd = {f"backbone.net.{k}": v for k, v in official_style_state_dict(src).items()}
    assert len(sd) == len(official_names(4)) + 4 + 2 * 4
    dst = Detector(EVA02ViT(**TINY))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        result = dst.load_state_dict(sd, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert "backbone.net.rope_win.freqs_cos" in sd  # the caller's dict is left alone
    for k, v in src.state_dict().items():
        assert torch.equal(dst.backbone.net.state_dict()[k], v), k
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert "Dropped 12 RoPE buffers under 'backbone.net.'" in records[0].getMessage()
    assert "[4, 8]" in records[0].getMessage()
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(dst.backbone.net(x)["last_feat"], src(x)["last_feat"])


def test_load_mismatching_rope_buffers_warns_once(caplog):
    model = EVA02ViT(**TINY)
    sd = official_style_state_dict(model)
    sd["rope_glb.freqs_sin"] = sd["rope_glb.freqs_sin"] + 0.1
    sd["blocks.2.attn.rope.freqs_cos"] = torch.zeros(64, 32)  # wrong head dim
    with caplog.at_level(logging.INFO, logger=LOGGER):
        result = model.load_state_dict(sd, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "Dropped 12 RoPE buffers; 2 of them" in records[0].getMessage()


def test_official_config_keys_and_errors():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate

    official_keys = dict(
        TINY,
        mlp_ratio=4 * 2 / 3,
        qkv_bias=True,
        drop_path_rate=0.1,
        use_abs_pos=True,
        use_rel_pos=False,
        rope=True,
        pt_hw_seq_len=16,
        intp_freq=True,
        residual_block_indexes=[],
        use_act_checkpoint=True,
        pretrain_img_size=224,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
        xattn=True,
    )
    model = instantiate(L(EVA02ViT)(**official_keys))
    assert {b.attn.attn_impl for b in model.blocks} == {"sdpa"}  # xattn=True needs no xformers
    assert EVA02ViT(**TINY, xattn=False).blocks[0].attn.attn_impl == "plain"
    assert EVA02ViT(**TINY, rope=False).blocks[0].attn.rope is None
    with pytest.raises(ValueError, match="use_rel_pos=False"):
        EVA02ViT(**TINY, use_rel_pos=True)
    with pytest.raises(ValueError, match="attn_impl"):
        EVA02ViT(**TINY, attn_impl="flash")


def test_removed_xformers_impl_names_its_replacement():
    with pytest.raises(InputError, match="attn_impl='xformers' was removed: use 'sdpa'"):
        EVA02ViT(**TINY, attn_impl="xformers")


def test_simple_feature_pyramid_on_top():
    from detectron2.modeling import SimpleFeaturePyramid
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    sfp = SimpleFeaturePyramid(
        net=EVA02ViT(**TINY),
        in_feature="last_feat",
        out_channels=32,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        square_pad=128,
    )
    feats = sfp(torch.randn(1, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        f"p{i}": (1, 32, 128 >> i, 128 >> i) for i in range(2, 7)
    }
