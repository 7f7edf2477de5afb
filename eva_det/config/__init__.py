"""Config helpers: locate shared LazyConfig building blocks, size LSJ loaders, switch datasets
(LVIS, your own COCO-format json), layer-wise lr with frozen blocks."""

from .custom import use_custom_coco_dataset
from .freeze import vit_lr_factor
from .lsj import lsj_test_augmentations, lsj_train_augmentations, set_lsj_image_size
from .lvis import use_lvis_federated
from .paths import configs_root, get_config

__all__ = [
    "configs_root",
    "get_config",
    "lsj_train_augmentations",
    "lsj_test_augmentations",
    "set_lsj_image_size",
    "use_custom_coco_dataset",
    "use_lvis_federated",
    "vit_lr_factor",
]
