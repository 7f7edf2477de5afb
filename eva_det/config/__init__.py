"""Config helpers: locate eva_det's shared LazyConfig building blocks and size LSJ loaders."""

from .lsj import lsj_test_augmentations, lsj_train_augmentations, set_lsj_image_size
from .lvis import use_lvis_federated
from .paths import configs_root, get_config

__all__ = [
    "configs_root",
    "get_config",
    "lsj_train_augmentations",
    "lsj_test_augmentations",
    "set_lsj_image_size",
    "use_lvis_federated",
]
