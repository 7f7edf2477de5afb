"""2-D rotary position embedding (RoPE) of the EVA-02 ViT, computed from the token grid at run time.

EVA-02 rotates every (query, key) head vector in interleaved pairs. The first half of the head dim
encodes the row (h) position, the second half the column (w) position; each half uses the
frequencies ``1 / theta ** (2i / d)`` for ``d = head_dim // 2`` and ``i < d // 2``, each repeated
twice (one per member of a pair). Positions along an axis of ``n`` tokens are
``arange(n) / n * pt_seq_len``, so the 16x16 pretraining grid is stretched onto any grid.

The official code (``VisionRotaryEmbeddingFast``) builds those tables once, for one square grid, as
persistent buffers. Here they are a pure function of ``(h, w, head_dim)`` (:func:`rope_cos_sin`),
cached per grid and device by :class:`VisionRotaryEmbedding2D`, which holds no state-dict entries.
For square grids the tables equal the official ones.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

__all__ = ["rope_cos_sin", "rotate_half", "apply_rope", "VisionRotaryEmbedding2D"]


def _axis_angles(n: int, freqs: torch.Tensor, pt_seq_len: int, intp_freq: bool) -> torch.Tensor:
    """
    Rotation angles of one axis.

    Args:
        n (int): number of tokens along the axis.
        freqs (Tensor): (F,) float32 frequencies.
        pt_seq_len (int): pretraining grid length the positions are stretched onto.
        intp_freq (bool): if False, positions are token indices ``arange(n)``.

    Returns:
        Tensor: (n, 2F) angles, each frequency repeated twice (interleaved pairs).
    """
    scale = pt_seq_len if intp_freq else n
    # Same float32 operations as the official code, so square tables match it bit for bit.
    pos = torch.arange(n) / n * scale  # (n,)
    angles = pos[:, None] * freqs[None, :]  # (n, F)
    return angles.repeat_interleave(2, dim=-1)  # (n, 2F): f0, f0, f1, f1, ...


def rope_cos_sin(
    h: int,
    w: int,
    head_dim: int,
    pt_seq_len: int = 16,
    theta: float = 10000.0,
    intp_freq: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Cosine and sine tables of the EVA-02 2-D rotary embedding for an h x w token grid.

    Args:
        h (int): number of token rows.
        w (int): number of token columns.
        head_dim (int): attention head dimension; must be a multiple of 4.
        pt_seq_len (int): side of the pretraining token grid (16 for EVA-02); positions along an
            axis of n tokens are ``arange(n) / n * pt_seq_len``.
        theta (float): frequency base.
        intp_freq (bool): if False, positions are plain token indices ``arange(n)`` (the official
            ``intp_freq=False`` behaviour, which only existed for n == pt_seq_len).

    Returns:
        tuple[Tensor, Tensor]: ``cos`` and ``sin``, each (h * w, head_dim) float32 on the CPU, rows
        in row-major (h, w) order; columns [0, head_dim/2) rotate by the row position,
        [head_dim/2, head_dim) by the column position.
    """
    if head_dim % 4 != 0:
        raise ValueError(
            f"2-D RoPE needs head_dim divisible by 4 (two axes x interleaved pairs), got {head_dim}"
        )
    dim = head_dim // 2  # channels per axis
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
    ang_h = _axis_angles(h, freqs, pt_seq_len, intp_freq)  # (h, dim)
    ang_w = _axis_angles(w, freqs, pt_seq_len, intp_freq)  # (w, dim)
    angles = torch.cat(
        [ang_h[:, None, :].expand(h, w, dim), ang_w[None, :, :].expand(h, w, dim)], dim=-1
    )  # (h, w, head_dim)
    angles = angles.reshape(h * w, head_dim)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """
    Rotate interleaved pairs by 90 degrees: (a, b) -> (-b, a).

    Args:
        x (Tensor): (..., D) with D even.

    Returns:
        Tensor: (..., D).
    """
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    a, b = pairs.unbind(dim=-1)  # (..., D/2) each
    return torch.stack((-b, a), dim=-1).flatten(-2)  # (..., D)


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """
    Rotate ``t`` by the angles whose cosine and sine are given.

    Args:
        t (Tensor): (..., N, D) vectors, N tokens in row-major grid order.
        cos (Tensor): (N, D) cosine table.
        sin (Tensor): (N, D) sine table.

    Returns:
        Tensor: (..., N, D), in the promoted dtype of ``t`` and the tables.
    """
    return t * cos + rotate_half(t) * sin


class VisionRotaryEmbedding2D(nn.Module):
    """
    2-D rotary embedding whose tables follow the token grid of each call.

    The tables are cached per (h, w, device) in a plain dict (at most ``max_cached`` grids; they are
    not parameters or buffers, so they never appear in a state dict). Inputs in half precision are
    rotated in float32 and cast back, as the official code does under AMP (float32 buffers).
    """

    def __init__(
        self,
        head_dim: int,
        pt_seq_len: int = 16,
        theta: float = 10000.0,
        intp_freq: bool = True,
        max_cached: int = 8,
    ):
        """
        Args:
            head_dim (int): attention head dimension; must be a multiple of 4.
            pt_seq_len (int): side of the pretraining token grid.
            theta (float): frequency base.
            intp_freq (bool): stretch positions onto the pretraining grid (:func:`rope_cos_sin`).
            max_cached (int): number of grids whose tables are kept; the oldest is evicted first.
        """
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.pt_seq_len = pt_seq_len
        self.theta = theta
        self.intp_freq = intp_freq
        self.max_cached = max_cached
        self._cache: Dict[Tuple[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, pt_seq_len={self.pt_seq_len}, theta={self.theta}, "
            f"intp_freq={self.intp_freq}"
        )

    def cos_sin(
        self, hw: Tuple[int, int], device: torch.device
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            hw (tuple[int, int]): token grid (h, w).
            device (torch.device): where the tables are needed.

        Returns:
            tuple[Tensor, Tensor]: float32 ``cos``, ``sin`` tables, each (h * w, head_dim).
        """
        key = (int(hw[0]), int(hw[1]), torch.device(device))
        tables = self._cache.get(key)
        if tables is None:
            cos, sin = rope_cos_sin(
                key[0], key[1], self.head_dim, self.pt_seq_len, self.theta, self.intp_freq
            )
            tables = (cos.to(device), sin.to(device))
            while len(self._cache) >= max(self.max_cached, 1):
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = tables
        return tables

    def forward(self, t: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """
        Args:
            t (Tensor): (B, num_heads, h * w, head_dim) queries or keys of an h x w grid.
            hw (tuple[int, int]): token grid (h, w).

        Returns:
            Tensor: rotated ``t``, same shape and dtype.
        """
        cos, sin = self.cos_sin(hw, t.device)  # (h*w, head_dim) each
        compute_dtype = torch.promote_types(t.dtype, torch.float32)
        return apply_rope(t.to(compute_dtype), cos, sin).to(t.dtype)
