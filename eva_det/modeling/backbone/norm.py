"""LayerNorm that always normalises in float32 (BEiT / EVA-01), even under autocast."""

import numbers
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerNormWithForceFP32"]


class LayerNormWithForceFP32(nn.Module):
    """``nn.LayerNorm`` computed in float32 and cast back to the input dtype.

    Args:
        normalized_shape (int or sequence of int): trailing shape to normalise over.
        eps (float): added to the variance.
        elementwise_affine (bool): learn ``weight`` and ``bias``.
    """

    def __init__(
        self,
        normalized_shape: Union[int, Sequence[int]],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
    ):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(self.normalized_shape))
            self.bias = nn.Parameter(torch.zeros(self.normalized_shape))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.elementwise_affine}"
