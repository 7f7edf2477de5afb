"""Metadata of a registered dataset with its class names, for drawing and reports.

detectron2's ``register_coco_instances`` records only ``json_file`` / ``image_root``: the class
names (``thing_classes``) are set the first time the dataset is loaded (``DatasetCatalog.get``).
Code that draws predictions without loading the dataset (``tools/demo.py``, training pictures)
would label detections with bare class ids. :func:`dataset_metadata` fills the names in from the
json's ``categories`` exactly as detectron2's ``load_coco_json`` does (sorted by category id), so
a later load finds the same values.
"""

import json
import logging
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

__all__ = ["dataset_metadata", "test_dataset_name"]

logger = logging.getLogger(__name__)


def _coco_categories(json_file: str) -> list:
    """The ``categories`` list of a COCO-format json, sorted by id."""
    with open(json_file) as f:
        categories = json.load(f).get("categories") or []
    return sorted(categories, key=lambda c: c["id"])


def dataset_metadata(name: Optional[str]) -> Metadata:
    """``MetadataCatalog.get(name)``, with ``thing_classes`` read from its json when missing.

    Args:
        name (str or None): a registered dataset name (e.g. the config's first test dataset);
            None or an unregistered name give an empty ``Metadata`` (labels show class ids).

    Returns:
        Metadata: the catalog's own object (so the names are filled in once per process).
    """
    if not name:
        return Metadata()
    if name not in DatasetCatalog.list():
        logger.warning(
            "Dataset %r is not registered: detections are labelled with class ids. Register it "
            "(e.g. register_coco_instances) before drawing.",
            name,
        )
        return Metadata()
    meta = MetadataCatalog.get(name)
    if meta.get("thing_classes") is not None:
        return meta
    json_file = meta.get("json_file")
    if not json_file or not os.path.isfile(json_file):
        logger.warning(
            "Dataset %r has no thing_classes and no readable json_file (%s): detections are "
            "labelled with class ids.",
            name,
            json_file,
        )
        return meta
    categories = _coco_categories(json_file)
    if categories:
        meta.thing_classes = [c["name"] for c in categories]
        meta.thing_dataset_id_to_contiguous_id = {c["id"]: i for i, c in enumerate(categories)}
        logger.info("Dataset %r: %d class names read from %s", name, len(categories), json_file)
    return meta


def test_dataset_name(cfg) -> Optional[str]:
    """The first name in ``cfg.dataloader.test.dataset.names`` (None if the config has none)."""
    try:
        names = cfg.dataloader.test.dataset.names
    except (AttributeError, KeyError):
        return None
    from .datasets.coco_json import dataset_names

    names = dataset_names(names)  # a Custom recipe's LazyCall registers the dataset here
    return names[0] if names else None
