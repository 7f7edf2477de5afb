"""Data: dataset registration for eva_det.

Importing this package registers ``shapes_train`` and ``shapes_val`` in detectron2's catalogs under
``$DETECTRON2_DATASETS/shapes`` (no files are read or written at import; see
``eva_det.data.datasets.shapes`` for lazy generation and ``ensure_shapes``), and
``objects365_train`` / ``objects365_val`` under ``$DETECTRON2_DATASETS/Objects365``
(``eva_det.data.datasets.objects365``).
"""

from .datasets import (
    OBJECTS365_CATEGORIES,
    SHAPES_CLASSES,
    SHAPES_IMAGE_SIZE,
    SHAPES_NUM_TRAIN,
    SHAPES_NUM_VAL,
    SHAPES_SPLITS,
    ensure_shapes,
    generate_shapes,
    register_objects365,
    register_shapes,
)

register_shapes()
register_objects365()

__all__ = [
    "OBJECTS365_CATEGORIES",
    "SHAPES_CLASSES",
    "SHAPES_IMAGE_SIZE",
    "SHAPES_NUM_TRAIN",
    "SHAPES_NUM_VAL",
    "SHAPES_SPLITS",
    "ensure_shapes",
    "generate_shapes",
    "register_objects365",
    "register_shapes",
]
