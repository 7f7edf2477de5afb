"""Synthetic pretrained-backbone checkpoints in the official EVA-01 / EVA-02 and timm layouts.

Tiny dims (embed 64, depth 2, 4 heads), random values from a seeded generator.
"""

import torch

DIM, DEPTH, HEADS = 64, 2, 4
EVA01_HIDDEN = 160  # non-integer mlp ratio like EVA-01 1B (6144 / 1408)
EVA02_HIDDEN = int(DIM * 4 * 2 / 3)  # 170
HEAD_DIM = DIM // HEADS


def _randn(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _linear(sd, name, out_f, in_f, g, bias=True):
    sd[f"{name}.weight"] = _randn(out_f, in_f, generator=g)
    if bias:
        sd[f"{name}.bias"] = _randn(out_f, generator=g)


def _stem(sd, g, patch, grid, extra_tokens=("cls_token",)):
    sd["patch_embed.proj.weight"] = _randn(DIM, 3, patch, patch, generator=g)
    sd["patch_embed.proj.bias"] = _randn(DIM, generator=g)
    sd["pos_embed"] = _randn(1, 1 + grid * grid, DIM, generator=g)
    for name in extra_tokens:
        sd[name] = _randn(1, 1, DIM, generator=g)


def make_eva01(style="beit", patch=14, grid=16, gamma=False, seed=0):
    """EVA-01 backbone: BEiT style (qkv + q/v bias), MAE style (qkv with bias) or separate q/k/v."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _stem(sd, g, patch, grid, extra_tokens=("cls_token", "mask_token"))
    sd["rel_pos_bias.relative_position_bias_table"] = _randn(10, HEADS, generator=g)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"] = _randn(DIM, generator=g)
            sd[p + n + ".bias"] = _randn(DIM, generator=g)
        if style == "beit":
            _linear(sd, p + "attn.qkv", 3 * DIM, DIM, g, bias=False)
            sd[p + "attn.q_bias"] = _randn(DIM, generator=g)
            sd[p + "attn.v_bias"] = _randn(DIM, generator=g)
        elif style == "mae":
            _linear(sd, p + "attn.qkv", 3 * DIM, DIM, g, bias=True)
        elif style == "separate":
            _linear(sd, p + "attn.q_proj", DIM, DIM, g, bias=False)
            _linear(sd, p + "attn.k_proj", DIM, DIM, g, bias=False)
            _linear(sd, p + "attn.v_proj", DIM, DIM, g, bias=False)
            sd[p + "attn.q_bias"] = _randn(DIM, generator=g)
            sd[p + "attn.v_bias"] = _randn(DIM, generator=g)
        _linear(sd, p + "attn.proj", DIM, DIM, g)
        _linear(sd, p + "mlp.fc1", EVA01_HIDDEN, DIM, g)
        _linear(sd, p + "mlp.fc2", DIM, EVA01_HIDDEN, g)
        if gamma:
            sd[p + "gamma_1"] = _randn(DIM, generator=g)
            sd[p + "gamma_2"] = _randn(DIM, generator=g)
    for n in ("norm", "lm_head"):
        sd[n + ".weight"] = _randn(DIM, generator=g)
        sd[n + ".bias"] = _randn(DIM, generator=g)
    return sd


def make_eva02_official(seed=1, patch=16, grid=14):
    """Official EVA-02 MIM layout (eva02_*_pt_*_p14to16.pt), rope buffers included."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _stem(sd, g, patch, grid, extra_tokens=("cls_token", "mask_token"))
    sd["rope.freqs_cos"] = _randn(16 * 16, HEAD_DIM, generator=g)
    sd["rope.freqs_sin"] = _randn(16 * 16, HEAD_DIM, generator=g)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"] = _randn(DIM, generator=g)
            sd[p + n + ".bias"] = _randn(DIM, generator=g)
        for n in ("q_proj", "k_proj", "v_proj"):
            _linear(sd, p + "attn." + n, DIM, DIM, g, bias=False)
        sd[p + "attn.q_bias"] = _randn(DIM, generator=g)
        sd[p + "attn.v_bias"] = _randn(DIM, generator=g)
        sd[p + "attn.rope.freqs_cos"] = sd["rope.freqs_cos"]
        sd[p + "attn.rope.freqs_sin"] = sd["rope.freqs_sin"]
        _linear(sd, p + "attn.proj", DIM, DIM, g)
        _linear(sd, p + "mlp.w1", EVA02_HIDDEN, DIM, g)
        _linear(sd, p + "mlp.w2", EVA02_HIDDEN, DIM, g)
        sd[p + "mlp.ffn_ln.weight"] = _randn(EVA02_HIDDEN, generator=g)
        sd[p + "mlp.ffn_ln.bias"] = _randn(EVA02_HIDDEN, generator=g)
        _linear(sd, p + "mlp.w3", DIM, EVA02_HIDDEN, g)
    sd["norm.weight"] = _randn(DIM, generator=g)
    sd["norm.bias"] = _randn(DIM, generator=g)
    _linear(sd, "lm_head", 32, DIM, g)
    return sd


# Official EVA-02 in-block name -> timm name, written out by hand from timm's checkpoint_filter_fn.
OFFICIAL_TO_TIMM_NAMES = {
    "attn.q_bias": "attn.q_proj.bias",
    "attn.v_bias": "attn.v_proj.bias",
    "mlp.w1.weight": "mlp.fc1_g.weight",
    "mlp.w1.bias": "mlp.fc1_g.bias",
    "mlp.w2.weight": "mlp.fc1_x.weight",
    "mlp.w2.bias": "mlp.fc1_x.bias",
    "mlp.ffn_ln.weight": "mlp.norm.weight",
    "mlp.ffn_ln.bias": "mlp.norm.bias",
    "mlp.w3.weight": "mlp.fc2.weight",
    "mlp.w3.bias": "mlp.fc2.bias",
}


def official_to_timm(sd):
    """A timm EVA-02 B/L (qkv_fused=False, scale_mlp=True) state dict with the same tensors."""
    out = {}
    for key, value in sd.items():
        if "rope" in key or key in ("mask_token", "lm_head.weight", "lm_head.bias"):
            continue  # timm never stores these
        parts = key.split(".", 2)
        if parts[0] == "blocks":
            key = f"blocks.{parts[1]}." + OFFICIAL_TO_TIMM_NAMES.get(parts[2], parts[2])
        out[key] = value
    return out
