"""Federated-loss class weights as a config-friendly callable."""

from typing import Sequence, Union

import torch
from detectron2.data.detection_utils import get_fed_loss_cls_weights

__all__ = ["FedLossClsWeights"]


class FedLossClsWeights:
    """Callable returning per-class sampling weights ``image_count ** freq_weight_power``.

    ``FastRCNNOutputLayers(get_fed_loss_cls_weights=...)`` calls it once at construction; the
    result becomes the predictor's persistent ``fed_loss_cls_weights`` buffer.

    Args:
        dataset_names (str or list[str]): registered training sets with ``class_image_count``.
        freq_weight_power (float): exponent applied to the per-class image counts.
    """

    def __init__(self, dataset_names: Union[str, Sequence[str]], freq_weight_power: float = 0.5):
        self.dataset_names = dataset_names
        self.freq_weight_power = freq_weight_power

    def __call__(self) -> torch.Tensor:
        names = self.dataset_names
        names = [names] if isinstance(names, str) else list(names)
        return get_fed_loss_cls_weights(names, self.freq_weight_power)
