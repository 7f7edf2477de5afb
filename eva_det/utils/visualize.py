"""Draw detections on images and video frames with detectron2's visualizers.

Images go through ``Visualizer`` (boxes, masks, "class score%" labels); video frames through
``VideoVisualizer``, which keeps an instance's colour across frames (and, as detectron2 does,
draws masks instead of boxes when the model predicts masks). Class names come from the
metadata's ``thing_classes`` (:func:`eva_det.data.metadata.dataset_metadata` fills them in for
datasets registered without them).
"""

from typing import List, Optional, Tuple

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["filter_instances", "draw_instances", "draw_instances_with_labels", "FrameDrawer"]


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


class _LabelRecordingVisualizer(Visualizer):
    """detectron2's ``Visualizer`` that keeps the text labels it drew (``drawn_labels``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn_labels: List[str] = []

    def overlay_instances(self, *args, labels=None, **kwargs):
        self.drawn_labels = [str(label) for label in labels or []]
        return super().overlay_instances(*args, labels=labels, **kwargs)


def draw_instances_with_labels(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Optional[Metadata] = None,
    instance_mode: ColorMode = ColorMode.IMAGE,
    scale: float = 1.0,
) -> Tuple[np.ndarray, List[str]]:
    """Draw ``instances`` on a copy of ``image_rgb``; also return the labels drawn.

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB image, in the coordinates of ``instances``.
        instances (Instances): CPU detections (``pred_boxes``, ``scores``, ``pred_classes``,
            optional ``pred_masks`` (N, H, W)).
        metadata (Metadata): gives ``thing_classes`` for the labels (class ids without it).
        instance_mode (ColorMode): detectron2's colouring mode.
        scale (float): output size / input size (larger gives more legible labels).

    Returns:
        np.ndarray: (round(H * scale), round(W * scale), 3) uint8 RGB image with the drawings.
        list[str]: one "class score%" label per instance, as drawn.
    """
    visualizer = _LabelRecordingVisualizer(
        image_rgb, metadata, scale=scale, instance_mode=instance_mode
    )
    drawn = visualizer.draw_instance_predictions(instances).get_image()
    return drawn, visualizer.drawn_labels


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata: Optional[Metadata] = None,
    instance_mode: ColorMode = ColorMode.IMAGE,
) -> np.ndarray:
    """:func:`draw_instances_with_labels` at scale 1, the image only."""
    return draw_instances_with_labels(image_rgb, instances, metadata, instance_mode)[0]


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
