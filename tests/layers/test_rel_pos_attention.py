"""Rel-pos attention: SDPA (whole or row-blocked mask) and blocked equal the plain path."""

import pytest
import torch

from eva_det.layers.blocked_attention import blocked_rel_pos_attention
from eva_det.layers.rel_pos_attention import (
    plain_rel_pos_attention,
    rel_pos_attention,
    resolve_impl,
    sdpa_rel_pos_attention,
)
from eva_det.modeling.backbone.eva_vit import Block


def _inputs(B=2, nh=3, qh=5, qw=7, hd=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    N = qh * qw
    ts = [torch.randn(B, nh, N, hd, generator=g) for _ in range(3)]
    ts.append(torch.randn(B, nh, qh, qw, qh, generator=g))
    ts.append(torch.randn(B, nh, qh, qw, qw, generator=g))
    return [t.requires_grad_(requires_grad) for t in ts]


def _independent_reference(q, k, v, rel_h, rel_w, scale):
    """Loop over queries: logits row = scale q.k + rel_h[row(key)] + rel_w[col(key)]."""
    B, nh, qh, qw, kh = rel_h.shape
    kw = rel_w.shape[-1]
    rows = torch.arange(kh * kw) // kw
    cols = torch.arange(kh * kw) % kw
    out = torch.empty_like(q)
    for n in range(qh * qw):
        i, j = divmod(n, qw)
        logits = scale * (q[:, :, n : n + 1] @ k.transpose(-1, -2))[:, :, 0]  # (B, nh, Nk)
        logits = logits + rel_h[:, :, i, j][..., rows] + rel_w[:, :, i, j][..., cols]
        out[:, :, n] = (logits.softmax(-1)[..., None] * v).sum(2)
    return out


@pytest.mark.parametrize("fn", [plain_rel_pos_attention, blocked_rel_pos_attention])
def test_kernels_match_independent_reference(fn):
    q, k, v, rh, rw = _inputs()
    ref = _independent_reference(q, k, v, rh, rw, 0.3)
    torch.testing.assert_close(fn(q, k, v, rh, rw, 0.3), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("max_mask_bytes", [1, 3 * 2 * 3 * 7 * 35 * 4, 2**30])
def test_sdpa_row_blocks_equal_plain_values_and_grads(max_mask_bytes):
    # 1 byte: one grid row per block; 3 rows' worth: blocks of 3, 2 (5 rows, uneven); 1 GiB: whole
    outs, grads = [], []
    for impl in ("plain", "sdpa"):
        q, k, v, rh, rw = _inputs(requires_grad=True)
        if impl == "plain":
            out = plain_rel_pos_attention(q, k, v, rh, rw, 0.3)
        else:
            out = sdpa_rel_pos_attention(q, k, v, rh, rw, 0.3, max_mask_bytes=max_mask_bytes)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v, rh, rw)])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-5)
    for name, g_sdpa, g_plain in zip("q k v rel_h rel_w".split(), grads[1], grads[0]):
        torch.testing.assert_close(g_sdpa, g_plain, atol=1e-6, rtol=1e-5, msg=name)


# float64 logits of one query row: 4 queries x 12 keys x 8 bytes. 1 byte: one row of one head per
# block; 2 rows (3 rows = 2 + 1, uneven); one whole head; both heads in one block
@pytest.mark.parametrize("block_bytes", [1, 2 * 384, 3 * 384, 2 * 3 * 384])
def test_blocked_gradcheck_float64(block_bytes):
    small = _inputs(B=1, nh=2, qh=3, qw=4, hd=4)
    ts = [t.double().detach().requires_grad_(True) for t in small]
    ref = plain_rel_pos_attention(*ts, 0.3)
    fn = lambda *a: blocked_rel_pos_attention(*a, 0.3, block_bytes)  # noqa: E731
    torch.testing.assert_close(fn(*ts), ref, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(fn, ts)


def test_blocked_non_square_grid_values_and_grads_float32():
    """A 4 x 6 grid split into single query rows: float32 grads equal the plain path's."""
    q, k, v, rh, rw = _inputs(qh=4, qw=6, requires_grad=True)
    out = blocked_rel_pos_attention(q, k, v, rh, rw, 0.5, block_bytes=1)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v, rh, rw)]
    for t in (q, k, v, rh, rw):
        t.grad = None
    plain_rel_pos_attention(q, k, v, rh, rw, 0.5).square().sum().backward()
    for name, g, t in zip("q k v rel_h rel_w".split(), grads, (q, k, v, rh, rw)):
        torch.testing.assert_close(g, t.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_auto_picks_blocked_on_cpu_fp32_and_sdpa_for_16_bit():
    q = torch.zeros(1, 1, 4, 2)
    assert resolve_impl("auto", q) == "blocked"
    assert resolve_impl("auto", q.bfloat16()) == "sdpa"
    assert resolve_impl("plain", q) == "plain"


def test_sdpa_without_bias_and_dispatch():
    q, k, v, rh, rw = _inputs()
    ref = plain_rel_pos_attention(q, k, v, None, None, 0.3)
    torch.testing.assert_close(sdpa_rel_pos_attention(q, k, v, None, None, 0.3), ref)
    for impl in ("auto", "plain", "sdpa", "blocked"):
        torch.testing.assert_close(
            rel_pos_attention(q, k, v, rh, rw, 0.3, impl),
            plain_rel_pos_attention(q, k, v, rh, rw, 0.3),
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="flash"):
        rel_pos_attention(q, k, v, rh, rw, 0.3, "flash")


def test_mismatched_bias_shapes_are_rejected():
    q, k, v, rh, rw = _inputs()
    with pytest.raises(ValueError, match="covers a"):
        sdpa_rel_pos_attention(q, k, v, rh[:, :, :4], rw[:, :, :4], 0.3)


@pytest.mark.parametrize("window_size,hw", [(4, (10, 7)), (0, (6, 9))])
def test_blocked_block_equals_plain_block(window_size, hw):
    """Whole EVA-01 blocks, windowed with padding and global, forward and backward, fp32."""
    kw = dict(
        dim=32,
        num_heads=4,
        use_rel_pos=True,
        rel_pos_zero_init=False,
        window_size=window_size,
        input_size=(8, 8),
        beit_like_qkv_bias=True,
    )
    x = torch.randn(2, *hw, 32)
    results = []
    impls = [("plain", 1.0), ("sdpa", 1e-6), ("sdpa", 1.0), ("blocked", 1.0)]
    for impl, mb in impls:
        torch.manual_seed(0)
        blk = Block(attn_impl=impl, max_attn_mask_mb=mb, **kw)
        xg = x.clone().requires_grad_(True)
        y = blk(xg)
        y.square().mean().backward()
        results.append((y.detach(), xg.grad, {n: p.grad for n, p in blk.named_parameters()}))
    y0, gx0, gp0 = results[0]
    for y, gx, gp in results[1:]:
        torch.testing.assert_close(y, y0, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gx, gx0, atol=1e-6, rtol=1e-5)
        for n in gp0:
            torch.testing.assert_close(gp[n], gp0[n], atol=1e-6, rtol=1e-4, msg=n)


def test_max_attn_mask_mb_must_be_positive():
    with pytest.raises(ValueError, match="max_attn_mask_mb"):
        Block(dim=32, num_heads=4, max_attn_mask_mb=0)
