"""Maskness rescoring (SOLOv2), as EVA applies it after the mask head."""

import torch

__all__ = ["maskness_scores"]


def maskness_scores(mask_probs: torch.Tensor, thresh: float) -> torch.Tensor:
    """Mean mask probability over the pixels above ``thresh`` (0 where none are).

    Args:
        mask_probs (Tensor): (N, 1, M, M) mask probabilities (after sigmoid).
        thresh (float): binarisation threshold.

    Returns:
        Tensor (N,) of maskness values in [0, 1].
    """
    binary = (mask_probs > thresh).to(mask_probs.dtype)
    count = binary.sum(dim=(1, 2, 3))
    total = (mask_probs * binary).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
