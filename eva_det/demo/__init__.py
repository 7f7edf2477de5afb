"""Run LazyConfig detectors on images and videos and draw the results (``tools/demo.py``)."""

from .predictor import LazyPredictor, test_dataset_name
from .run import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    DemoItem,
    expand_inputs,
    run_demo,
    run_on_images,
    run_on_video,
)
from .visualize import FrameDrawer, draw_instances, draw_instances_with_labels, filter_instances

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
