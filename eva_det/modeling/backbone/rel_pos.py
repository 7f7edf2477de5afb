"""Decomposed relative position bias (ViTDet / MViTv2) with EVA's two resize modes.

EVA-01 stores one table per axis, ``rel_pos_h`` / ``rel_pos_w`` of shape (2*S-1, head_dim). When a
block sees a token grid whose side differs from S the table is resized:

* ``"vitdet"``: 1-D linear interpolation (``F.interpolate(mode="linear")``), used in training.
* ``"beit"``: BEiT's cubic spline. Source samples sit at geometric offsets
  ``0, +-1, +-(1+q), +-(1+q+q^2), ...`` (q = 1.0903078); the spline (not-a-knot end conditions,
  extrapolated past the ends, like ``scipy.interpolate.interp1d(kind="cubic")``) is evaluated at
  the integer offsets ``-t..t`` with ``t = new_len // 2``.

Both resizes are linear in the table, so each is a (new_len, old_len) matrix. The "beit" matrix is
computed once per (old_len, new_len) in float64 with torch and cached per device and dtype; the
official code instead calls scipy on the CPU for every channel in every forward pass.
"""

from functools import lru_cache
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "BEIT_GEOMETRIC_RATIO",
    "beit_source_offsets",
    "cubic_spline_matrix",
    "beit_resize_matrix",
    "resize_rel_pos",
    "get_rel_pos",
    "decomposed_rel_pos_bias",
]

BEIT_GEOMETRIC_RATIO = 1.0903078


def beit_source_offsets(src_len: int, q: float = BEIT_GEOMETRIC_RATIO) -> torch.Tensor:
    """Geometric sample positions of a length-``src_len`` table in BEiT's resize (float64)."""
    dis = []
    cur = 1.0
    for i in range(src_len // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    pos = [-d for d in reversed(dis)] + [0.0] + dis
    return torch.tensor(pos, dtype=torch.float64)


def cubic_spline_matrix(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Matrix ``W`` (len(t), len(x)) with ``W @ y`` = not-a-knot cubic spline through (x, y) at t.

    Points outside ``[x[0], x[-1]]`` are extrapolated with the end polynomials, as scipy's
    ``interp1d(kind="cubic", fill_value="extrapolate")`` does.

    Args:
        x (Tensor): strictly increasing knots, shape (n,), n >= 4, float64.
        t (Tensor): evaluation points, shape (m,), float64.
    """
    n = x.numel()
    if n < 4:
        raise ValueError(f"a cubic spline needs at least 4 samples, got {n}")
    h = x[1:] - x[:-1]  # (n-1,)
    # Unknowns: second derivatives M (n,). System A @ M = B @ y.
    A = torch.zeros(n, n, dtype=torch.float64)
    B = torch.zeros(n, n, dtype=torch.float64)
    for i in range(1, n - 1):
        A[i, i - 1], A[i, i], A[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        B[i, i - 1], B[i, i], B[i, i + 1] = 6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]
    # Not-a-knot: the third derivative is continuous at x[1] and x[n-2].
    A[0, 0], A[0, 1], A[0, 2] = h[1], -(h[0] + h[1]), h[0]
    A[-1, -3], A[-1, -2], A[-1, -1] = h[-1], -(h[-2] + h[-1]), h[-2]
    C = torch.linalg.solve(A, B)  # (n, n): M = C @ y

    # Interval of each t, clamped so that points outside use the end pieces.
    idx = torch.searchsorted(x, t, right=True) - 1
    idx = idx.clamp(0, n - 2)
    x0, x1, hi = x[idx], x[idx + 1], h[idx]
    a, b = x1 - t, t - x0
    eye = torch.eye(n, dtype=torch.float64)
    # S(t) = M_i a^3/(6h) + M_{i+1} b^3/(6h) + (y_i/h - M_i h/6) a + (y_{i+1}/h - M_{i+1} h/6) b
    coef_m0 = (a**3 / (6 * hi) - hi * a / 6)[:, None]
    coef_m1 = (b**3 / (6 * hi) - hi * b / 6)[:, None]
    W = coef_m0 * C[idx] + coef_m1 * C[idx + 1]
    W = W + (a / hi)[:, None] * eye[idx] + (b / hi)[:, None] * eye[idx + 1]
    return W


@lru_cache(maxsize=64)
def _beit_resize_matrix_f64(src_len: int, dst_len: int) -> torch.Tensor:
    x = beit_source_offsets(src_len)
    t = dst_len // 2
    targets = torch.arange(-t, t + 0.1, 1.0, dtype=torch.float64)
    return cubic_spline_matrix(x, targets)


_DEVICE_CACHE = {}


def beit_resize_matrix(
    src_len: int, dst_len: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Cached (dst_len, src_len) matrix of BEiT's cubic-spline resize on ``device``."""
    key = (src_len, dst_len, str(device), dtype)
    mat = _DEVICE_CACHE.get(key)
    if mat is None:
        mat = _beit_resize_matrix_f64(src_len, dst_len).to(device=device, dtype=dtype)
        _DEVICE_CACHE[key] = mat
    return mat


def resize_rel_pos(rel_pos: torch.Tensor, new_len: int, interp_type: str) -> torch.Tensor:
    """Resize a relative position table (L, C) to (new_len, C).

    Args:
        rel_pos (Tensor): table of shape (L, C).
        new_len (int): target length (2 * tokens - 1).
        interp_type (str): "vitdet" (linear) or "beit" (cubic spline on geometric offsets).
    """
    if rel_pos.shape[0] == new_len:
        return rel_pos
    if interp_type == "vitdet":
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=new_len, mode="linear"
        )
        return resized.reshape(-1, new_len).permute(1, 0)
    if interp_type == "beit":
        mat = beit_resize_matrix(rel_pos.shape[0], new_len, rel_pos.device, torch.float32)
        return (mat @ rel_pos.float()).to(rel_pos.dtype)
    raise ValueError(f"interp_type must be 'vitdet' or 'beit', got {interp_type!r}")


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor, interp_type: str) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis.

    Args:
        q_size (int): number of query positions along the axis.
        k_size (int): number of key positions along the axis.
        rel_pos (Tensor): table of shape (L, C).
        interp_type (str): resize mode, see :func:`resize_rel_pos`.

    Returns:
        Tensor of shape (q_size, k_size, C).
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos_resized = resize_rel_pos(rel_pos, max_rel_dist, interp_type)
    # Scale the coordinates with the shorter length if q and k differ in size.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
    interp_type: str,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed relative position bias.

    The bias added to the attention logits of query (i, j) and key (k, l) is
    ``rel_h[b, i, j, k] + rel_w[b, i, j, l]``.

    Args:
        q (Tensor): queries (B, q_h * q_w, C) (unscaled).
        rel_pos_h (Tensor): table (Lh, C) for the height axis.
        rel_pos_w (Tensor): table (Lw, C) for the width axis.
        q_size (tuple): (q_h, q_w).
        k_size (tuple): (k_h, k_w).
        interp_type (str): resize mode of the tables.

    Returns:
        rel_h (B, q_h, q_w, k_h) and rel_w (B, q_h, q_w, k_w).
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h, interp_type)  # (q_h, k_h, C)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w, interp_type)  # (q_w, k_w, C)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh.to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw.to(q.dtype))
    return rel_h, rel_w
