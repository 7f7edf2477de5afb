"""Turn a COCO detector recipe into its LVIS v1 variant (one helper for every LVIS config)."""

from .lsj import set_lsj_image_size
from .paths import get_config

__all__ = ["use_lvis_federated"]


def use_lvis_federated(model, image_size: int, total_batch_size: int):
    """Apply ``configs/common/data/lvis_federated.py`` to ``model`` and return its dataloader.

    Sets 1203 classes and every cascade predictor's sigmoid-CE + federated-loss settings (score
    0.02, 300 detections) on the LazyConfig ``model`` in place; the returned LVIS loader uses
    repeat-factor sampling, LSJ at ``image_size`` and ``total_batch_size`` images per iteration.
    """
    lvis = get_config("common/data/lvis_federated.py")
    dataloader = lvis.dataloader
    set_lsj_image_size(dataloader, image_size)
    dataloader.train.total_batch_size = total_batch_size
    model.roi_heads.update(lvis.roi_heads)
    for predictor in model.roi_heads.box_predictors:
        predictor.update(lvis.box_predictor)
    return dataloader
