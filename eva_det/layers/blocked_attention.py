"""Exact rel-pos attention in cache-sized blocks of (head, query rows), with its own backward.

The official formulation builds several (heads, N, N) tensors per global block (2.6 GB each for
the 1B model at 1280 px in fp32) and streams them through memory four times. This kernel walks the
(batch x heads, query rows) plane in blocks whose logits fit in ``block_bytes`` (default 16 MiB,
about a CPU's last-level cache): per block it writes the bias ``rel_h + rel_w`` into one reused
buffer, adds ``(scale q) @ k^T`` onto it with one GEMM (``baddbmm``), applies softmax in place and
multiplies by v. Nothing N x N is allocated, nothing is saved for backward but q, k, v, the two
bias factors and the output; the backward recomputes each block's probabilities (like
FlashAttention) and returns the gradients of q, k, v, ``rel_h`` and ``rel_w``.

Results equal :func:`eva_det.layers.rel_pos_attention.plain_rel_pos_attention` to float rounding
(the bias is summed before the q.k term instead of after). Computation is in q's dtype; eva_det
uses it for float32 on CPU, where it beats both the plain path and PyTorch's CPU flash kernel.
"""

from typing import Iterator, Tuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["DEFAULT_BLOCK_BYTES", "blocked_rel_pos_attention", "check_rel_pos_shapes"]

DEFAULT_BLOCK_BYTES = 16 * 2**20


def check_rel_pos_shapes(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> None:
    """Raise ValueError unless rel_h / rel_w are (B, heads, q_h, q_w, k) for q (B, heads, N, d)."""
    B, nh, N, _ = q.shape
    if rel_h.shape[:4] != rel_w.shape[:4] or rel_h.shape[:2] != (B, nh):
        raise ValueError(
            f"rel_h {tuple(rel_h.shape)} and rel_w {tuple(rel_w.shape)} must both be "
            f"(B={B}, heads={nh}, q_h, q_w, k)"
        )
    if rel_h.shape[2] * rel_h.shape[3] != N:
        raise ValueError(f"q has {N} tokens but rel_h covers a {tuple(rel_h.shape[2:4])} grid")


def _blocks(G: int, qh: int, qw: int, Nk: int, itemsize: int, block_bytes: int):
    """Block sizes (heads per block, query rows per block) for logits of <= block_bytes."""
    row_bytes = qw * Nk * itemsize
    head_bytes = qh * row_bytes
    if head_bytes <= block_bytes:
        return max(1, min(G, block_bytes // head_bytes)), qh
    return 1, max(1, min(qh, block_bytes // row_bytes))


def _iter_blocks(G: int, qh: int, hb: int, rb: int) -> Iterator[Tuple[int, int, int, int]]:
    for g0 in range(0, G, hb):
        for r0 in range(0, qh, rb):
            yield g0, min(G, g0 + hb), r0, min(qh, r0 + rb)


def _probs(buf, qs, kt, rel_h, rel_w, g0, g1, r0, r1):
    """Softmax probabilities of one block, written into ``buf``; returns (g, rows * qw, Nk)."""
    qw, kh, kw = rel_h.shape[2], rel_h.shape[3], rel_w.shape[3]
    g, n0, n1 = g1 - g0, r0 * qw, r1 * qw
    s = buf[:g, : n1 - n0]
    # (g, rows, qw, kh, kw) bias, then += (scale q) @ k^T, then softmax over keys, all in place
    torch.add(
        rel_h[g0:g1, r0:r1, :, :, None],
        rel_w[g0:g1, r0:r1, :, None, :],
        out=s.view(g, r1 - r0, qw, kh, kw),
    )
    s.baddbmm_(qs[g0:g1, n0:n1], kt[g0:g1])
    torch.softmax(s, dim=-1, out=s)
    return s


class _BlockedRelPosAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale, block_bytes):
        # q (G, N, hd), k/v (G, Nk, hd), rel_h (G, qh, qw, kh), rel_w (G, qh, qw, kw)
        G, N, _ = q.shape
        qh, qw, kh = rel_h.shape[1:]
        Nk = kh * rel_w.shape[-1]
        qs = (q * scale).contiguous()
        kt = k.transpose(1, 2)
        hb, rb = _blocks(G, qh, qw, Nk, q.element_size(), block_bytes)
        buf = q.new_empty(hb, rb * qw, Nk)
        out = q.new_empty(G, N, v.shape[-1])
        for g0, g1, r0, r1 in _iter_blocks(G, qh, hb, rb):
            p = _probs(buf, qs, kt, rel_h, rel_w, g0, g1, r0, r1)
            torch.bmm(p, v[g0:g1], out=out[g0:g1, r0 * qw : r1 * qw])
        ctx.save_for_backward(qs, k, v, rel_h, rel_w, out)
        ctx.scale, ctx.blocks = scale, (hb, rb)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        qs, k, v, rel_h, rel_w, out = ctx.saved_tensors
        G, N, _ = qs.shape
        qh, qw, kh = rel_h.shape[1:]
        kw = rel_w.shape[-1]
        hb, rb = ctx.blocks
        d_out = d_out.contiguous()
        # D_i = sum_j P_ij dP_ij = dO_i . O_i (softmax backward without the N x N P)
        delta = (d_out * out).sum(-1, keepdim=True)  # (G, N, 1)
        kt, vt = k.transpose(1, 2), v.transpose(1, 2)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(v)
        d_rel_h, d_rel_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
        buf = qs.new_empty(hb, rb * qw, kh * kw)
        dbuf = torch.empty_like(buf)
        for g0, g1, r0, r1 in _iter_blocks(G, qh, hb, rb):
            g, n0, n1 = g1 - g0, r0 * qw, r1 * qw
            p = _probs(buf, qs, kt, rel_h, rel_w, g0, g1, r0, r1)  # (g, n, Nk)
            do = d_out[g0:g1, n0:n1]
            dv[g0:g1].baddbmm_(p.transpose(1, 2), do)
            ds = torch.bmm(do, vt[g0:g1], out=dbuf[:g, : n1 - n0])  # dP
            ds.sub_(delta[g0:g1, n0:n1]).mul_(p)  # dS = P * (dP - D), grad of the logits
            torch.bmm(ds, k[g0:g1], out=dq[g0:g1, n0:n1])
            dk[g0:g1].baddbmm_(ds.transpose(1, 2), qs[g0:g1, n0:n1])
            ds5 = ds.view(g, r1 - r0, qw, kh, kw)
            torch.sum(ds5, dim=-1, out=d_rel_h[g0:g1, r0:r1])
            torch.sum(ds5, dim=-2, out=d_rel_w[g0:g1, r0:r1])
        dq.mul_(ctx.scale)  # logits = (scale q) . k; dk already used the scaled q
        return dq, dk, dv, d_rel_h, d_rel_w, None, None


def blocked_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> torch.Tensor:
    """``softmax(scale * q @ k^T + rel_h + rel_w) @ v`` in blocks, differentiable in all inputs.

    Args:
        q (Tensor): (B, heads, N, head_dim), N = q_h * q_w.
        k, v (Tensor): (B, heads, Nk, head_dim), Nk = k_h * k_w.
        rel_h (Tensor): (B, heads, q_h, q_w, k_h) bias per query and key row.
        rel_w (Tensor): (B, heads, q_h, q_w, k_w) bias per query and key column.
        scale (float): factor on q.k.
        block_bytes (int): bound on one block's logits; one head's whole logits when they fit,
            else whole query rows of one head (at least one row).

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    check_rel_pos_shapes(q, rel_h, rel_w)
    B, nh, N, hd = q.shape
    qh, qw, kh = rel_h.shape[2:]
    kw = rel_w.shape[-1]
    G = B * nh
    out = _BlockedRelPosAttention.apply(
        q.reshape(G, N, hd),
        k.reshape(G, kh * kw, -1),
        v.reshape(G, kh * kw, -1),
        rel_h.reshape(G, qh, qw, kh).contiguous(),
        rel_w.reshape(G, qh, qw, kw).contiguous(),
        scale,
        block_bytes,
    )
    return out.view(B, nh, N, -1)
