"""Large-scale-jitter (LSJ) augmentations parameterised by image size.

One loader config per recipe, not one file per size: configs call
``set_lsj_image_size(dataloader, 1536)`` instead of importing ``coco_loader_lsj_1536.py``.
"""

from typing import List

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

__all__ = ["lsj_train_augmentations", "lsj_test_augmentations", "set_lsj_image_size"]


def lsj_train_augmentations(
    image_size: int, min_scale: float = 0.1, max_scale: float = 2.0
) -> List:
    """Flip, resize by a random scale of ``image_size`` and crop to ``image_size`` squared."""
    return [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeScale)(
            min_scale=min_scale,
            max_scale=max_scale,
            target_height=image_size,
            target_width=image_size,
        ),
        L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
    ]


def lsj_test_augmentations(image_size: int) -> List:
    """Resize so that the longer side is at most ``image_size`` (shorter side ``image_size``)."""
    return [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]


def set_lsj_image_size(dataloader, image_size: int) -> None:
    """Point a LazyConfig ``dataloader`` (train + test) at LSJ of ``image_size``, in place."""
    dataloader.train.mapper.augmentations = lsj_train_augmentations(image_size)
    dataloader.test.mapper.augmentations = lsj_test_augmentations(image_size)
