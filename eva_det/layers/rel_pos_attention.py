"""Softmax attention, optionally with the decomposed relative position bias: one dispatcher.

Both EVA backbones attend through :func:`rel_pos_attention` and name the implementation with the
same ``attn_impl`` vocabulary, :data:`ATTN_IMPLS`. EVA-01 (ViTDet) passes the decomposed bias;
EVA-02 passes none (it rotates q and k with RoPE instead). For a query at grid position (i, j)
and a key at (k, l) the logit is

    scale * q[i, j] . k[k, l] + rel_h[i, j, k] + rel_w[i, j, l]

(per batch element and head). Every implementation gives the same output to float rounding:

* "plain" (:func:`plain_rel_pos_attention`): the official formulation, matmul + 5-D broadcast add
  + softmax + matmul. Builds several N x N tensors; kept as the reference.
* "sdpa" (:func:`sdpa_rel_pos_attention`): ``F.scaled_dot_product_attention`` with the bias as a
  float ``attn_mask`` in q's dtype (eligible for the fused CPU flash, CUDA memory-efficient and
  cuDNN kernels). The mask is built contiguous (so no hidden copy) and, when it would exceed
  ``max_mask_bytes``, one block of query rows at a time, which bounds its memory. Without a bias
  it is a plain SDPA call (any fused kernel, flash included).
* "blocked" (:func:`eva_det.layers.blocked_attention.blocked_rel_pos_attention`): the plain
  formulation in cache-sized blocks with a recomputing backward; nothing N x N is allocated.
  Fastest on CPU. Without a bias there is nothing to block: it runs as "sdpa".
* "auto" (the default): "blocked" for float32 CPU tensors, "sdpa" otherwise (CUDA, or 16-bit
  under autocast).

Two former values are refused with an :class:`~eva_det.errors.InputError` naming the
replacement (:data:`REMOVED_ATTN_IMPLS`): EVA-01's "augmented" (bias folded into extra q/k
channels; no row of ``bench/RESULTS.md`` showed it fastest, and "blocked" saves less for
backward) and EVA-02's "xformers" (the official ``xattn`` kernel; SDPA gives the same numbers
without the dependency).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import InputError
from .blocked_attention import blocked_rel_pos_attention, check_rel_pos_shapes

__all__ = [
    "ATTN_IMPLS",
    "REMOVED_ATTN_IMPLS",
    "check_attn_impl",
    "resolve_impl",
    "DEFAULT_MAX_MASK_BYTES",
    "plain_rel_pos_attention",
    "sdpa_rel_pos_attention",
    "rel_pos_attention",
]

#: The ``attn_impl`` values both backbones accept.
ATTN_IMPLS = ("auto", "sdpa", "blocked", "plain")
#: Values accepted by earlier versions, with what to use instead.
REMOVED_ATTN_IMPLS = {
    "augmented": "'blocked' (allocates nothing N x N and saves less for backward) or 'sdpa'",
    "xformers": "'sdpa' (the same numbers from PyTorch's fused kernels, no xformers needed)",
}

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
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Official formulation: ``softmax(scale * q @ k^T + bias) @ v``.

    Args:
        q, k, v (Tensor): (B, heads, N, head_dim), N = q_h * q_w (keys: k_h * k_w).
        rel_h (Tensor or None): (B, heads, q_h, q_w, k_h) height bias; None for no bias.
        rel_w (Tensor or None): (B, heads, q_h, q_w, k_w) width bias.
        scale (float or None): factor on q.k; None: ``head_dim ** -0.5``.

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
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
    scale: Optional[float] = None,
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
        scale (float or None): factor on q.k; None: SDPA's default ``head_dim ** -0.5``.
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


def check_attn_impl(impl: str) -> str:
    """Return ``impl`` if it is in :data:`ATTN_IMPLS`, else raise InputError saying what to use.

    Args:
        impl (str): the ``attn_impl`` value of a backbone config (``model.backbone.net.attn_impl``).
    """
    if impl in REMOVED_ATTN_IMPLS:
        raise InputError(
            f"attn_impl={impl!r} was removed: use {REMOVED_ATTN_IMPLS[impl]} "
            f"(set model.backbone.net.attn_impl; accepted: {ATTN_IMPLS})."
        )
    if impl not in ATTN_IMPLS:
        raise InputError(
            f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r} (model.backbone.net.attn_impl; "
            "'auto' picks 'blocked' on CPU in float32 and 'sdpa' otherwise)."
        )
    return impl


def resolve_impl(impl: str, q: torch.Tensor) -> str:
    """The implementation ``impl`` stands for with queries ``q`` ("auto" picks by device/dtype)."""
    if check_attn_impl(impl) == "auto":
        return "blocked" if q.device.type == "cpu" and q.dtype == torch.float32 else "sdpa"
    return impl


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: Optional[torch.Tensor] = None,
    rel_w: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    impl: str = "auto",
    max_mask_bytes: int = DEFAULT_MAX_MASK_BYTES,
) -> torch.Tensor:
    """Attention by the implementation ``impl``; the one entry point of both backbones.

    Args:
        q, k, v (Tensor): (B, heads, N, head_dim), N = q_h * q_w (keys: k_h * k_w).
        rel_h (Tensor or None): (B, heads, q_h, q_w, k_h) height bias; None (with ``rel_w``)
            for attention without bias.
        rel_w (Tensor or None): (B, heads, q_h, q_w, k_w) width bias.
        scale (float or None): factor on q.k; None: ``head_dim ** -0.5``.
        impl (str): one of :data:`ATTN_IMPLS` (see the module doc).
        max_mask_bytes (int): with "sdpa" and a bias, the largest mask built at once.

    Returns:
        Tensor (B, heads, N, head_dim).
    """
    impl = resolve_impl(impl, q)
    if impl == "plain":
        return plain_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    if rel_h is not None and impl == "blocked":
        if scale is None:
            scale = q.shape[-1] ** -0.5
        return blocked_rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    return sdpa_rel_pos_attention(q, k, v, rel_h, rel_w, scale, max_mask_bytes)
