"""Run LazyConfig detectors on images and videos and draw the results (``tools/demo.py``)."""

from eva_det.data.metadata import test_dataset_name
from eva_det.utils.visualize import (
    FrameDrawer,
    draw_instances,
    draw_instances_with_labels,
    filter_instances,
)

from .predictor import LazyPredictor
from .run import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    DemoItem,
    expand_inputs,
    run_demo,
    run_on_images,
    run_on_video,
)

__all__ = [
    "LazyPredictor",
    "test_dataset_name",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "DemoItem",
    "expand_inputs",
    "run_demo",
    "run_on_images",
    "run_on_video",
    "FrameDrawer",
    "draw_instances",
    "draw_instances_with_labels",
    "filter_instances",
]
