"""Draw detections on images and video frames with detectron2's visualizers.

Images go through ``Visualizer`` (boxes, masks, "class score%" labels); video frames through
``VideoVisualizer``, which keeps an instance's colour across frames (and, as detectron2 does,
draws masks instead of boxes when the model predicts masks). Class names come from the
metadata's ``thing_classes``.
"""

from typing import Optional

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["filter_instances", "draw_instances", "FrameDrawer"]


def filter_instances(instances: Instances, threshold: float) -> Instances:
    """Detections with ``scores >= threshold``, on the CPU, scores as float32.

    Args:
        instances (Instances): model output for one image (``scores`` (N,)).
        threshold (float): lowest score kept.
    """
    instances = instances.to("cpu")
    if instances.has("scores"):
        instances.scores = instances.scores.float()
        instances = instances[instances.scores >= threshold]
    return instances


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Optional[Metadata] = None,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> np.ndarray:
    """Draw ``instances`` on a copy of ``image_rgb``.

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB image, in the coordinates of ``instances``.
        instances (Instances): CPU detections (``pred_boxes``, ``scores``, ``pred_classes``,
            optional ``pred_masks`` (N, H, W)).
        metadata (Metadata): gives ``thing_classes`` for the labels (class ids without it).
        instance_mode (ColorMode): detectron2's colouring mode.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB image with the drawings.
    """
    visualizer = Visualizer(image_rgb, metadata, scale=1.0, instance_mode=instance_mode)
    return visualizer.draw_instance_predictions(instances).get_image()


class FrameDrawer:
    """Draws the frames of one video; instances keep their colour from frame to frame."""

    def __init__(self, metadata: Optional[Metadata] = None):
        """
        Args:
            metadata (Metadata): gives ``thing_classes`` for the labels.
        """
        self._visualizer = VideoVisualizer(metadata or Metadata(), ColorMode.IMAGE)

    def __call__(self, frame_rgb: np.ndarray, instances: Instances) -> np.ndarray:
        """(H, W, 3) uint8 RGB frame -> the same frame with ``instances`` drawn."""
        return self._visualizer.draw_instance_predictions(frame_rgb, instances).get_image()
