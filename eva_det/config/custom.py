"""Point a recipe at your own COCO-format dataset given by config values (no code).

A ``Custom`` recipe defines a top-level ``dataset`` node (name, class names, train / test json
and image folders) and calls :func:`use_custom_coco_dataset` once; every value stays a config
value, so ``dataset.train_json=...`` on the command line works like editing the file.
"""

from detectron2.config import LazyCall as L

from eva_det.data.datasets.coco_json import register_coco_json

__all__ = ["use_custom_coco_dataset"]


def use_custom_coco_dataset(dataloader, key: str = "dataset") -> None:
    """Make ``dataloader.{train,test}`` read the datasets described by the config's ``key``.

    The config's ``key`` node must have ``name``, ``thing_classes`` (list or None),
    ``train_json``, ``train_images``, ``test_json`` and ``test_images``. The loaders' dataset
    names become ``LazyCall``s of :func:`eva_det.data.datasets.register_coco_json` (registered
    as ``<name>_train`` / ``<name>_test`` on first use, checked against
    ``model.roi_heads.num_classes``); the evaluator follows ``dataloader.test`` as before.

    Args:
        dataloader: a LazyConfig dataloader with ``train`` and ``test`` (e.g. coco_lsj.py's).
        key (str): top-level config key of the dataset values.
    """
    for split, loader in (("train", dataloader.train), ("test", dataloader.test)):
        loader.dataset.names = L(register_coco_json)(
            name=f"${{{key}.name}}_{split}",
            json_file=f"${{{key}.{split}_json}}",
            image_root=f"${{{key}.{split}_images}}",
            thing_classes=f"${{{key}.thing_classes}}",
            num_classes="${model.roi_heads.num_classes}",
            config_key=key,
        )
