"""Unwrapping models from DistributedDataParallel."""

from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["unwrap_ddp"]


def unwrap_ddp(model: nn.Module) -> nn.Module:
    """The module inside ``model`` if it is a ``DistributedDataParallel``, else ``model``."""
    return model.module if isinstance(model, DistributedDataParallel) else model
