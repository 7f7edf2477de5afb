"""Layer-wise lr decay for ViT backbones with optionally frozen early blocks, as a LazyCall.

``optimizer.params.lr_factor_func = L(vit_lr_factor)(lr_decay_rate=0.7, num_layers=12,
frozen_blocks=4)`` keeps the patch / position embeddings and blocks 0-3 at lr 0: AdamW then
leaves them exactly unchanged (its weight decay is scaled by the lr too). Their gradients are
still computed, so this saves no memory; it only keeps pretrained features fixed, which helps
on small datasets. ``frozen_blocks=0`` is plain layer-wise decay.
"""

from functools import partial
from typing import Callable

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

__all__ = ["vit_lr_factor"]


def _factor(name: str, lr_decay_rate: float, num_layers: int, frozen_blocks: int) -> float:
    if frozen_blocks > 0 and name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            return 0.0
        if ".blocks." in name and int(name.split(".blocks.")[1].split(".")[0]) < frozen_blocks:
            return 0.0
    return get_vit_lr_decay_rate(name, lr_decay_rate=lr_decay_rate, num_layers=num_layers)


def vit_lr_factor(
    lr_decay_rate: float, num_layers: int, frozen_blocks: int = 0
) -> Callable[[str], float]:
    """The lr multiplier of a parameter, by its name (detectron2's ``lr_factor_func``).

    Args:
        lr_decay_rate (float): layer-wise decay per block (detectron2's get_vit_lr_decay_rate).
        num_layers (int): number of ViT blocks.
        frozen_blocks (int): blocks 0 .. frozen_blocks-1 and the patch / position embeddings
            get factor 0; must be in [0, num_layers].
    """
    if not 0 <= int(frozen_blocks) <= int(num_layers):
        raise ValueError(f"frozen_blocks={frozen_blocks} must be in [0, num_layers={num_layers}]")
    return partial(
        _factor,
        lr_decay_rate=float(lr_decay_rate),
        num_layers=int(num_layers),
        frozen_blocks=int(frozen_blocks),
    )
