"""One-image predictor for LazyConfig detectors (detectron2's ``DefaultPredictor``, LazyConfig way).

:class:`LazyPredictor` builds the model with :func:`eva_det.engine.build.build_inference_model`
(weights of ``cfg.train.init_checkpoint``, EMA weights when
``train.model_ema.use_ema_weights_for_eval_only`` asks for them, ``test.aug`` TTA, ``test.amp``
autocast, ``test.compile_backbone``) and preprocesses each image like the config's test loader
(``cfg.dataloader.test.mapper.augmentations``, channel order ``cfg.model.input_format``).
"""

import logging

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T

from eva_det.data.metadata import dataset_metadata, test_dataset_name
from eva_det.engine.build import build_inference_model

__all__ = ["LazyPredictor", "set_score_threshold"]

logger = logging.getLogger(__name__)


def set_score_threshold(cfg, threshold: float) -> None:
    """Make the model keep detections down to ``threshold`` (like detectron2's demo does).

    Sets ``model.roi_heads.override_score_thresh`` (EVA's ROI heads) when the config leaves it
    None, else the ``test_score_thresh`` of ``model.roi_heads.box_predictor(s)``. An explicit
    ``override_score_thresh`` (e.g. 0.0 of EVA's evaluation commands) is kept.
    """
    roi_heads = cfg.model.get("roi_heads", None)
    if roi_heads is None:
        return
    if "override_score_thresh" in roi_heads:
        if roi_heads.override_score_thresh is None:
            roi_heads.override_score_thresh = float(threshold)
        return
    predictors = roi_heads.get("box_predictors", None) or [roi_heads.get("box_predictor", None)]
    for predictor in predictors:
        if predictor is not None and "test_score_thresh" in predictor:
            predictor.test_score_thresh = float(threshold)


class LazyPredictor:
    """Run a LazyConfig detector on single images given as (H, W, 3) BGR uint8 arrays.

    Attributes:
        cfg: the config the model was built from.
        inference_model (InferenceModel): what runs each image (:mod:`eva_det.engine.build`).
        detector (nn.Module): the detector in eval mode.
        model (nn.Module): ``detector``, wrapped for TTA when ``test.aug.enabled``.
        metadata (Metadata): metadata of the first test dataset, with ``thing_classes`` (class
            names for drawing) read from its json if it was registered without them.
        input_format (str): channel order the model expects ("RGB" or "BGR").
        device (str): where the model runs.
    """

    def __init__(self, cfg, load_weights: bool = True):
        """
        Args:
            cfg: LazyConfig with ``model``, ``dataloader.test`` and ``train`` (``init_checkpoint``,
                ``device``).
            load_weights (bool): load ``cfg.train.init_checkpoint``; False keeps the model's
                initialisation (benchmarks).
        """
        import eva_det.data  # noqa: F401  (registers eva_det's datasets, e.g. shapes metadata)

        self.cfg = cfg
        self.inference_model = build_inference_model(cfg, load_weights=load_weights)
        self.device = str(cfg.train.device)  # resolved by the builder (CPU without CUDA)
        self.detector = self.inference_model.detector
        self.model = self.inference_model.model
        self.augmentations = T.AugmentationList(
            instantiate(cfg.dataloader.test.mapper.augmentations)
        )
        self.input_format = str(cfg.model.get("input_format", "BGR"))
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"model.input_format={self.input_format!r}: the demo supports 'RGB' or 'BGR'"
            )
        # class names of the test dataset, read from its json if it was registered without
        self.metadata = dataset_metadata(test_dataset_name(cfg))

    def preprocess(self, image_bgr: np.ndarray) -> dict:
        """A model input dict for one image, as the test mapper makes it.

        Args:
            image_bgr (np.ndarray): (H, W, 3) uint8 image in BGR order (as ``cv2.imread`` gives).

        Returns:
            dict: ``"image"`` (3, h, w) float32 tensor in ``input_format`` order after the test
            augmentations; ``"height"``, ``"width"``: the original size H, W.
        """
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image_bgr.shape}")
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, image_bgr: np.ndarray) -> dict:
        """Predictions for one BGR image.

        Returns:
            dict: the model output for the image, e.g. ``{"instances": Instances}`` on the CPU in
            original-image coordinates (``pred_boxes``, ``scores``, ``pred_classes``,
            ``pred_masks`` (N, H, W) bool when the model has a mask head).
        """
        outputs = self.inference_model([self.preprocess(image_bgr)])[0]
        return {k: v.to("cpu") if hasattr(v, "to") else v for k, v in outputs.items()}
