"""Your own COCO-format dataset (one json + one image folder) registered from config values.

:func:`register_coco_json` is what ``projects/ViTDet/configs/Custom/`` recipes call through
``LazyCall`` (see :func:`eva_det.config.use_custom_coco_dataset`): the call sits where a dataset
name would, so the dataset is registered with the config's *final* values (command-line
overrides included) whenever something asks for the name -- the training / test loaders, the
evaluator, the pre-flight checks (:mod:`eva_det.engine.checks`) and ``tools/demo.py``.
:func:`dataset_names` turns such a config value (a name, a list of names, or a registration
call) into plain names.

Registration reads no file when the class names are given, so the demo can label detections
on a machine that only has the weights. The metadata set here: ``json_file``, ``image_root``,
``evaluator_type="coco"`` and ``thing_classes`` (what detectron2's ``Visualizer`` labels boxes
with); detectron2's ``load_coco_json`` adds ``thing_dataset_id_to_contiguous_id`` when the json
is read.
"""

import json
import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from eva_det.errors import InputError

__all__ = ["register_coco_json", "dataset_names", "json_category_names"]

logger = logging.getLogger(__name__)

#: ``registered_by`` metadata value marking registrations made here (only those are replaced).
_MARK = "eva_det.register_coco_json"


def json_category_names(json_file: str) -> List[str]:
    """The names of the json's ``categories`` in category-id order (= contiguous class order)."""
    if not os.path.isfile(json_file):
        raise InputError(
            f"Dataset json {json_file} does not exist (working directory {os.getcwd()}). Fix "
            "the path, or give the class names in the config so that it is not needed here."
        )
    try:
        with open(json_file) as f:
            categories = json.load(f).get("categories")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"Cannot read {json_file} as a COCO-format json: {e}") from None
    if not categories:
        raise InputError(
            f"{json_file} has no 'categories': a COCO-format json lists its classes as "
            '"categories": [{"id": 1, "name": "..."}, ...].'
        )
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def _load(name: str, json_file: str, image_root: str, where: str) -> List[dict]:
    """detectron2's ``load_coco_json`` with a clear error when the class names disagree."""
    try:
        return load_coco_json(json_file, image_root, name)
    except AssertionError as e:
        if "'thing_classes'" not in str(e):
            raise
        given = list(MetadataCatalog.get(name).thing_classes)
        raise InputError(
            f"Dataset {name!r}: the class names {where} {given} differ from the categories of "
            f"{json_file} {json_category_names(json_file)} (category-id order). Give exactly "
            "those names in that order, or null to take them from the json."
        ) from None


def _same_registration(name: str, json_file: str, image_root: str, classes) -> bool:
    meta = MetadataCatalog.get(name)
    return (
        meta.get("json_file") == json_file
        and meta.get("image_root") == image_root
        and list(meta.get("thing_classes", [])) == list(classes)
    )


def register_coco_json(
    name: str,
    json_file: str,
    image_root: str,
    thing_classes: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
    config_key: str = "",
) -> str:
    """Register a COCO-format instances json + its image folder as dataset ``name``.

    Idempotent: calling it again with the same values does nothing; with other values it
    replaces its own earlier registration of ``name`` (never one made by anything else).

    Args:
        name (str): dataset name to register, e.g. "my_dataset_train".
        json_file (str): COCO instances json (images, annotations with boxes and, for mask
            training, polygons or RLE, categories). Relative paths are relative to the working
            directory.
        image_root (str): folder that the json's ``file_name`` entries are relative to.
        thing_classes (list[str] or None): the json's category names in category-id order; None
            reads them from the json now. Checked against the json when it is loaded.
        num_classes (int or None): the model's class count (``model.roi_heads.num_classes``);
            if given it must equal the number of classes.
        config_key (str): config node the values came from (e.g. "dataset"), for messages.

    Returns:
        str: ``name``, so that a ``LazyCall`` of this function can stand for the name.
    """
    where = f"({config_key}.thing_classes)" if config_key else "given"
    json_file = os.path.abspath(os.path.expanduser(str(json_file)))
    image_root = os.path.abspath(os.path.expanduser(str(image_root)))
    if thing_classes is None:
        classes = json_category_names(json_file)
    else:
        classes = [str(c) for c in thing_classes]
        if not classes or len(set(classes)) != len(classes):
            raise InputError(
                f"Dataset {name!r}: class names {where} must be a non-empty list of distinct "
                f"names, got {classes}."
            )
    if num_classes is not None and int(num_classes) != len(classes):
        raise InputError(
            f"Dataset {name!r} has {len(classes)} classes {classes}, but the model has "
            f"num_classes={num_classes}: set model.roi_heads.num_classes={len(classes)} (or fix "
            f"the class names {where})."
        )
    if name in DatasetCatalog.list():
        if _same_registration(name, json_file, image_root, classes):
            return name
        if MetadataCatalog.get(name).get("registered_by") != _MARK:
            raise InputError(
                f"Dataset name {name!r} is already registered (e.g. a detectron2 builtin "
                "dataset): give your dataset another name."
            )
        logger.info("Re-registering dataset %r with %s, %s", name, json_file, image_root)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, partial(_load, name, json_file, image_root, where))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=classes,
        registered_by=_MARK,
    )
    return name


def dataset_names(value) -> List[str]:
    """Plain dataset names for a config's ``dataset.names`` / ``dataset_name`` value.

    Args:
        value: a name, a list of names, or a ``LazyCall`` node (a mapping with ``_target_``,
            e.g. of :func:`register_coco_json`) that returns a name or names when called; such
            nodes are called (which registers the dataset).
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping) and "_target_" in value:
        from detectron2.config import instantiate

        return dataset_names(instantiate(value))
    if value is None:
        return []
    return [n for item in value for n in dataset_names(item)]
