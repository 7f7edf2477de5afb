"""The trunk and attention vocabulary both EVA backbones share.

* every ``attn_impl`` gives the output and gradients of "plain" (the official formulation) for
  EVA-01 and EVA-02;
* activation checkpointing (every block or every n-th) gives the gradients of a run without it,
  recomputes exactly the checkpointed blocks in training and nothing in eval or under no_grad;
* removed ``attn_impl`` values fail with an InputError naming the replacement;
* the layers taken from timm (DropPath, Mlp) keep the official state-dict names and semantics.
"""

import pytest
import torch
from timm.layers import DropPath, Mlp

from eva_det.errors import InputError
from eva_det.layers.rel_pos_attention import ATTN_IMPLS
from eva_det.modeling.backbone.eva02_vit import EVA02ViT
from eva_det.modeling.backbone.eva_vit import EVAViT

COMMON = dict(
    img_size=128,
    embed_dim=64,
    depth=4,
    num_heads=4,
    window_size=4,
    window_block_indexes=[0, 1, 3],  # block 2 global
)
BACKBONES = {
    "eva01": (EVAViT, dict(COMMON, use_rel_pos=True, rel_pos_zero_init=False)),
    "eva02": (EVA02ViT, dict(COMMON)),
}


def _build(name, **kw):
    cls, args = BACKBONES[name]
    torch.manual_seed(0)
    return cls(**dict(args, **kw))


def _run(model, x):
    """(output, input grad, parameter grads) of one forward + backward."""
    x = x.clone().requires_grad_(True)
    y = model(x)["last_feat"]
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def test_vocabulary_is_shared():
    assert ATTN_IMPLS == ("auto", "sdpa", "blocked", "plain")


@pytest.mark.parametrize("impl", [i for i in ATTN_IMPLS if i != "plain"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_attn_impl_equals_plain(name, impl):
    x = torch.randn(2, 3, 112, 80)  # 7 x 5 tokens: windows of 4 need padding
    ref = _run(_build(name, attn_impl="plain").train(), x)
    model = _build(name, attn_impl=impl).train()
    assert {b.attn.attn_impl for b in model.blocks} == {impl}
    out = _run(model, x)
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-4)
    assert out[2].keys() == ref[2].keys() and len(ref[2]) > 0
    for n in ref[2]:
        scale = ref[2][n].abs().max().item()
        torch.testing.assert_close(out[2][n], ref[2][n], atol=1e-5 * scale, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("impl", ["augmented", "xformers"])
def test_removed_impls_name_the_replacement(name, impl):
    with pytest.raises(InputError, match=f"attn_impl='{impl}' was removed: use '"):
        _build(name, attn_impl=impl)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_unknown_impl_lists_the_vocabulary(name):
    with pytest.raises(InputError, match=r"one of \('auto', 'sdpa', 'blocked', 'plain'\)"):
        _build(name, attn_impl="flash")


def _count_block_calls(model):
    """Count forward calls of each block (a checkpointed block runs again in backward)."""
    calls = [0] * len(model.blocks)
    for i, blk in enumerate(model.blocks):
        blk.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_act_checkpoint_same_grads_and_recomputes_only_checkpointed_blocks(name, every):
    x = torch.randn(2, 3, 96, 128)
    ref_model = _build(name, drop_path_rate=0.0).train()
    ckpt_model = _build(
        name, drop_path_rate=0.0, use_act_checkpoint=True, act_checkpoint_every=every
    ).train()
    assert list(ckpt_model.state_dict()) == list(ref_model.state_dict())
    calls = _count_block_calls(ckpt_model)
    ref, out = _run(ref_model, x), _run(ckpt_model, x)
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1], atol=0, rtol=0)
    assert out[2].keys() == ref[2].keys()
    for n in ref[2]:
        torch.testing.assert_close(out[2][n], ref[2][n], atol=0, rtol=0, msg=n)
    assert calls == [2 if i % every == 0 else 1 for i in range(4)]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_act_checkpoint_is_off_in_eval_and_without_grad(name):
    model = _build(name, use_act_checkpoint=True)
    calls = _count_block_calls(model)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model.eval()
    model(x)["last_feat"].sum().backward()  # eval with autograd on (e.g. input gradients)
    assert calls == [1] * 4
    assert not any(model.checkpoints_block(i) for i in range(4))
    model.train()
    assert all(model.checkpoints_block(i) for i in range(4))
    with torch.no_grad():
        model(x)
        assert not any(model.checkpoints_block(i) for i in range(4))
    assert calls == [2] * 4


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_act_checkpoint_every_must_be_positive(name):
    with pytest.raises(InputError, match="act_checkpoint_every"):
        _build(name, act_checkpoint_every=0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_block_indexes_are_checked(name):
    with pytest.raises(InputError, match="window_block_indexes"):
        _build(name, window_block_indexes=[0, 4])


def test_timm_layers_keep_official_names():
    model = _build("eva01", drop_path_rate=0.3)
    blk = model.blocks[1]
    assert type(blk.mlp) is Mlp and type(blk.drop_path) is DropPath
    assert sorted(blk.mlp.state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    assert blk.drop_path.state_dict() == {}
    assert blk.mlp.fc1.out_features == 64 * 4
    names = set(model.state_dict())
    for i in range(4):
        assert {f"blocks.{i}.mlp.{n}" for n in ("fc1.weight", "fc2.bias")} <= names
    assert not any("drop_path" in n or ".norm." in n or "drop1" in n for n in names)
    # EVA-02: drop path from timm too, its SwiGLU keeps the official names (w1, w2, ffn_ln, w3).
    model2 = _build("eva02", drop_path_rate=0.3)
    assert type(model2.blocks[1].drop_path) is DropPath
    assert {n.split(".", 3)[3] for n in model2.state_dict() if ".mlp." in n} == {
        f"{layer}.{p}" for layer in ("w1", "w2", "ffn_ln", "w3") for p in ("weight", "bias")
    }
    # Block 0 has drop path rate 0: no module to run.
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)


def test_drop_path_semantics():
    """Per sample, the branch is either zero or scaled by 1 / keep; identity in eval."""
    dp = DropPath(0.25).train()
    x = torch.rand(4000, 3) + 1.0
    torch.manual_seed(0)
    y = dp(x)
    kept = (y != 0).all(dim=1)
    assert ((y == 0).all(dim=1) | kept).all()
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert dp.eval()(x) is x
