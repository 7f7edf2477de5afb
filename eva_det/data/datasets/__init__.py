"""Datasets shipped with eva_det (registration only; no I/O at import)."""

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
