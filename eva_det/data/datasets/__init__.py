"""Datasets shipped with eva_det (registration only; no I/O at import)."""

from .coco_json import dataset_names, json_category_names, register_coco_json
from .objects365 import (
    OBJECTS365_CATEGORIES,
    OBJECTS365_SPLITS,
    objects365_metadata,
    register_objects365,
)
from .shapes import (
    SHAPES_CLASSES,
    SHAPES_IMAGE_SIZE,
    SHAPES_NUM_TRAIN,
    SHAPES_NUM_VAL,
    SHAPES_SEED,
    SHAPES_SPLITS,
    default_shapes_root,
    ensure_shapes,
    generate_shapes,
    register_shapes,
    render_shapes_image,
)

__all__ = [
    "dataset_names",
    "json_category_names",
    "register_coco_json",
    "OBJECTS365_CATEGORIES",
    "OBJECTS365_SPLITS",
    "objects365_metadata",
    "register_objects365",
    "SHAPES_CLASSES",
    "SHAPES_IMAGE_SIZE",
    "SHAPES_NUM_TRAIN",
    "SHAPES_NUM_VAL",
    "SHAPES_SEED",
    "SHAPES_SPLITS",
    "default_shapes_root",
    "ensure_shapes",
    "generate_shapes",
    "register_shapes",
    "render_shapes_image",
]
