"""Softmax attention with the decomposed relative position bias (EVA-01 / ViTDet), four ways.

For a query at grid position (i, j) and a key at (k, l) the logit is

    scale * q[i, j] . k[k, l] + rel_h[i, j, k] + rel_w[i, j, l]

(per batch element and head). The three implementations give the same output to float rounding:

* :func:`plain_rel_pos_attention`: the official formulation, matmul + 5-D broadcast add + softmax
  + matmul. Builds several N x N tensors; kept as the reference.
* :func:`sdpa_rel_pos_attention`: ``F.scaled_dot_product_attention`` with the bias as a float
  ``attn_mask`` in q's dtype (eligible for the fused CPU flash, CUDA memory-efficient and cuDNN
  kernels). The mask is built contiguous (so no hidden copy) and, when it would exceed
  ``max_mask_bytes``, one block of query rows at a time, which bounds its memory.
* :func:`eva_det.layers.blocked_attention.blocked_rel_pos_attention`: the plain formulation in
  cache-sized blocks with a recomputing backward; nothing N x N is allocated. Fastest on CPU.
* :func:`augmented_rel_pos_attention`: the bias folded into extra q/k channels, so no N x N
  tensor is ever built (costs ``kh + kw`` extra channels in q.k).

``impl="auto"`` (the backbone default) picks "blocked" for float32 CPU tensors and "sdpa"
otherwise (CUDA, or 16-bit under autocast).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .blocked_attention import blocked_rel_pos_attention, check_rel_pos_shapes

__all__ = [
    "RelPosAttentionImpls",
    "resolve_impl",
    "DEFAULT_MAX_MASK_BYTES",
    "plain_rel_pos_attention",
    "sdpa_rel_pos_attention",
    "augmented_rel_pos_attention",
    "rel_pos_attention",
]

RelPosAttentionImpls = ("auto", "sdpa", "blocked", "plain", "augmented")

# Largest additive mask (bytes) sdpa_rel_pos_attention builds at once; larger ones are split into
# blocks of query rows. 1 GiB keeps every block of the 1B model at 1536 px in a few SDPA calls
# that each still fill a large GPU (a global block's whole fp32 mask there is 5.1 GiB).
DEFAULT_MAX_MASK_BYTES = 2**30


def plain_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Official formulation: ``softmax(scale * q @ k^T + bias) @ v``.

    Args:
        q, k, v (Tensor): (B, heads, N, head_dim), N = q_h * q_w (keys: k_h * k_w).
        rel_h (Tensor or None): (B, heads, q_h, q_w, k_h) height bias; None for no bias.
        rel_w (Tensor or None): (B, heads, q_h, q_w, k_w) width bias.
        scale (float): factor on q.k.

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    attn = (q * scale) @ k.transpose(-2, -1)  # (B, heads, N, Nk)
    if rel_h is not None:
        check_rel_pos_shapes(q, rel_h, rel_w)
        B, nh, qh, qw, kh = rel_h.shape
        kw = rel_w.shape[-1]
        attn = attn.view(B, nh, qh, qw, kh, kw)
        attn = attn + rel_h[..., :, None] + rel_w[..., None, :]
        attn = attn.view(B, nh, qh * qw, kh * kw)
    return attn.softmax(dim=-1) @ v


def sdpa_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    scale: float,
    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the decomposed bias as a float mask.

    The mask ``rel_h[..., :, None] + rel_w[..., None, :]`` is written contiguous in q's dtype.
    If the whole (B, heads, N, Nk) mask would exceed ``max_mask_bytes`` the queries are processed
    in blocks of whole grid rows, each with its own slice of the mask (softmax is per query, so
    the result is the same); at least one row is processed at a time.

    Args:
        q, k, v (Tensor): (B, heads, N, head_dim), N = q_h * q_w (keys: k_h * k_w).
        rel_h (Tensor or None): (B, heads, q_h, q_w, k_h); None for attention without bias.
        rel_w (Tensor or None): (B, heads, q_h, q_w, k_w).
        scale (float): factor on q.k.
        max_mask_bytes (int): memory bound of one mask block.

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    if rel_h is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    check_rel_pos_shapes(q, rel_h, rel_w)
    B, nh, qh, qw, kh = rel_h.shape
    Nk = kh * rel_w.shape[-1]
    rel_h, rel_w = rel_h.contiguous(), rel_w.contiguous()
    row_bytes = B * nh * qw * Nk * q.element_size()
    rows = max(1, min(qh, int(max_mask_bytes // row_bytes)))
    # Without autograd one mask buffer serves every block: a fresh large allocation per block
    # costs page faults on CPU that are a sizeable part of the attention time.
    needs_grad = torch.is_grad_enabled() and (rel_h.requires_grad or rel_w.requires_grad)
    reuse = rows < qh and not needs_grad
    buf = rel_h.new_empty((B, nh, rows, qw, kh, rel_w.shape[-1]), dtype=q.dtype) if reuse else None
    outs = []
    for r0 in range(0, qh, rows):
        r1 = min(qh, r0 + rows)
        # (B, heads, rows, q_w, k_h, k_w) -> (B, heads, rows * q_w, Nk), contiguous
        rh, rw = rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :]
        if reuse:
            mask = torch.add(rh, rw, out=buf[:, :, : r1 - r0])
        else:
            mask = (rh + rw).to(q.dtype)
        mask = mask.view(B, nh, (r1 - r0) * qw, Nk)
        q_blk = q[:, :, r0 * qw : r1 * qw] if rows < qh else q
        outs.append(F.scaled_dot_product_attention(q_blk, k, v, attn_mask=mask, scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def augmented_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Attention with the decomposed bias folded into the q/k channels (no N x N bias tensor).

    ``scale * q_i.k_j + rel_h[i, row(j)] + rel_w[i, col(j)] = q'_i . k'_j`` with
    ``q' = [scale * q, rel_h, rel_w]`` and ``k' = [k, onehot(row), onehot(col)]``.

    Args:
        q, k, v (Tensor): (B, heads, N, head_dim), N = q_h * q_w (keys: k_h * k_w).
        rel_h (Tensor or None): (B, heads, q_h, q_w, k_h); None for attention without bias.
        rel_w (Tensor or None): (B, heads, q_h, q_w, k_w).
        scale (float): factor on q.k.

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    if rel_h is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    check_rel_pos_shapes(q, rel_h, rel_w)
    B, nh, N, hd = q.shape
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    rel_h, rel_w = rel_h.reshape(B, nh, N, kh), rel_w.reshape(B, nh, N, kw)
    q_aug = torch.cat([q * scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
    rows = torch.arange(kh * kw, device=q.device) // kw
    cols = torch.arange(kh * kw, device=q.device) % kw
    onehot = torch.cat([F.one_hot(rows, kh), F.one_hot(cols, kw)], dim=-1).to(k.dtype)
    k_aug = torch.cat([k, onehot.expand(B, nh, kh * kw, kh + kw)], dim=-1)
    # Fused (flash) kernels need equal q/k/v widths: pad v with zeros and drop them after.
    v_pad = F.pad(v, (0, kh + kw))
    out = F.scaled_dot_product_attention(q_aug, k_aug, v_pad, scale=1.0)
    return out[..., :hd]


def resolve_impl(impl: str, q: torch.Tensor) -> str:
    """The implementation ``impl`` stands for with queries ``q`` ("auto" picks by device/dtype)."""
    if impl not in RelPosAttentionImpls:
        raise ValueError(f"attention impl must be one of {RelPosAttentionImpls}, got {impl!r}")
    if impl == "auto":
        return "blocked" if q.device.type == "cpu" and q.dtype == torch.float32 else "sdpa"
    return impl


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor],
    rel_w: Optional[torch.Tensor],
    scale: float,
    impl: str = "auto",
    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES,
) -> torch.Tensor:
    """Dispatch to one implementation; arguments as in :func:`sdpa_rel_pos_attention`.

    Args:
        impl (str): "auto", "sdpa", "blocked", "plain" or "augmented" (see the module doc).
    """
    impl = resolve_impl(impl, q)
    if impl == "plain":
        return plain_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    if rel_h is not None and impl == "blocked":
        return blocked_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    if impl == "augmented":
        return augmented_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    return sdpa_rel_pos_attention(q, k, v, rel_h, rel_w, scale, max_mask_bytes)
