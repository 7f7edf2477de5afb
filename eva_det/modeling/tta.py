"""Test-time augmentation (multi-scale + horizontal flip) for LazyConfig R-CNN models.

:class:`GeneralizedRCNNWithTTA` follows detectron2's wrapper of the same name, with explicit
arguments instead of a yacs config:

1. the input image is resized to every (``min_size``, ``max_size``) pair with
   ``ResizeShortestEdge`` and, with ``flip``, also flipped; each version goes through the model
   with the mask head (and EVA's maskness rescoring) switched off;
2. the detections of all versions are mapped back to the original image and merged like the
   model's own box inference: soft-NMS with the ROI heads' settings when
   ``model.roi_heads.use_soft_nms`` is on, otherwise per-class NMS with the last box predictor's
   ``test_nms_thresh`` / ``test_topk_per_image`` (score threshold 1e-8, as detectron2);
3. the mask head runs on the merged boxes in every version; the 28x28 mask probabilities are
   averaged over versions (flipped ones flipped back); if ``model.roi_heads.maskness_thresh`` is
   set, the merged scores are then multiplied by the maskness of the averaged masks.

Input sizes and ``square_pad``: ViTDet backbones pad every image to a ``square_pad`` square (the
token grid is then the same at every scale, so EVA-01's relative-position tables and EVA-02's
rotary tables are those of the padded grid). An augmented image larger than that square cannot
be padded to it (detectron2 would crop it), so ``max_size`` above ``square_pad`` is rejected
with an error that names both keys; to test larger scales, raise ``model.backbone.square_pad``
(which then applies to every scale). With ``square_pad=0`` each scale gets its own token grid,
and both backbones resize their position tables to it.

:func:`build_tta_model` reads ``test.aug.*`` (defaults in :mod:`eva_det.config.defaults`).
"""

import logging
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data.transforms import (
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    apply_augmentations,
)
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from fvcore.transforms import HFlipTransform, NoOpTransform
from torch import nn

from eva_det.roi_heads.inference import eva_fast_rcnn_inference
from eva_det.roi_heads.maskness import maskness_scores
from eva_det.utils.modules import unwrap_ddp
from eva_det.utils.sections import read_section

__all__ = ["GeneralizedRCNNWithTTA", "tta_settings", "build_tta_model"]

logger = logging.getLogger(__name__)

#: Score threshold of the merge (the passes already applied the model's own threshold).
MERGE_SCORE_THRESH = 1e-8


class GeneralizedRCNNWithTTA(nn.Module):
    """A ``GeneralizedRCNN`` evaluated on several resized / flipped versions of each image.

    Same call interface as ``GeneralizedRCNN.forward`` in eval mode: a list of dataset dicts
    (``"image"``: (C, H, W) tensor, optional ``"height"``, ``"width"`` of the original image) to a
    list of ``{"instances": Instances}`` in original-image coordinates.
    """

    def __init__(
        self,
        model: nn.Module,
        min_sizes: Sequence[int],
        max_size: Union[int, Sequence[int]],
        flip: bool = True,
        batch_size: int = 1,
    ):
        """
        Args:
            model (GeneralizedRCNN): the detector (DDP is unwrapped).
            min_sizes (Sequence[int]): short-edge sizes, one pass (two with ``flip``) each.
            max_size (int or Sequence[int]): long-edge cap, one for all sizes or one per size.
            flip (bool): add a horizontally flipped version of every size.
            batch_size (int): augmented images per forward pass.
        """
        super().__init__()
        model = unwrap_ddp(model)
        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(f"TTA supports GeneralizedRCNN models, got {type(model).__name__}")
        if getattr(model.roi_heads, "keypoint_on", False):
            raise ValueError("TTA does not support keypoint heads")
        min_sizes = [int(s) for s in min_sizes]
        if not min_sizes:
            raise ValueError("test.aug.min_sizes is empty: give at least one short-edge size")
        max_sizes = (
            [int(max_size)] * len(min_sizes)
            if isinstance(max_size, (int, np.integer))
            else [int(s) for s in max_size]
        )
        if len(max_sizes) != len(min_sizes):
            raise ValueError(
                f"test.aug.max_size has {len(max_sizes)} entries for {len(min_sizes)} "
                "test.aug.min_sizes: give one int or one per min size"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        square = self._square_pad(model)
        too_big = [s for s in max_sizes if square and s > square]
        if too_big:
            raise ValueError(
                f"test.aug.max_size {max(too_big)} exceeds model.backbone.square_pad={square}: "
                "images are padded to that square and a larger one would be cropped. Lower "
                f"test.aug.max_size or set model.backbone.square_pad={max(too_big)} (or more)."
            )
        self.model = model
        self.min_sizes, self.max_sizes, self.flip = min_sizes, max_sizes, bool(flip)
        self.batch_size = batch_size

    @staticmethod
    def _square_pad(model: GeneralizedRCNN) -> int:
        constraints = getattr(model.backbone, "padding_constraints", None) or {}
        return int(constraints.get("square_size", 0))

    @contextmanager
    def _box_only(self):
        """Switch off the mask / keypoint heads and maskness rescoring of ``model.roi_heads``."""
        roi_heads = self.model.roi_heads
        off = {"mask_on": False, "keypoint_on": False, "maskness_thresh": None}
        old = {k: getattr(roi_heads, k) for k in off if hasattr(roi_heads, k)}
        for k in old:
            setattr(roi_heads, k, off[k])
        try:
            yield
        finally:
            for k, v in old.items():
                setattr(roi_heads, k, v)

    def augment(self, input: dict) -> Tuple[List[dict], list]:
        """Resized / flipped copies of one input.

        Returns:
            list[dict]: inputs with "image" (C, h, w) of each version;
            list[Transform]: for each, the transform from the original image to that version.
        """
        if "image" not in input:
            raise KeyError("TTA inputs need an 'image' (C, H, W) tensor, as a DatasetMapper makes")
        image = input["image"].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
        orig = (input.get("height", image.shape[0]), input.get("width", image.shape[1]))
        pre = (
            ResizeTransform(orig[0], orig[1], image.shape[0], image.shape[1])
            if tuple(image.shape[:2]) != tuple(orig)
            else NoOpTransform()
        )
        augs = []
        for min_size, max_size in zip(self.min_sizes, self.max_sizes):
            resize = ResizeShortestEdge(min_size, max_size)
            augs.append([resize])
            if self.flip:
                augs.append([resize, RandomFlip(prob=1.0)])
        inputs, tfms = [], []
        square = self._square_pad(self.model)
        for aug in augs:
            new_image, tfm = apply_augmentations(aug, np.copy(image))
            if square and max(new_image.shape[:2]) > square:
                raise ValueError(
                    f"TTA image of size {new_image.shape[:2]} exceeds "
                    f"model.backbone.square_pad={square}"
                )
            out = {k: v for k, v in input.items() if k not in ("image", "instances")}
            out["image"] = torch.from_numpy(np.ascontiguousarray(new_image.transpose(2, 0, 1)))
            inputs.append(out)
            tfms.append(pre + tfm)
        return inputs, tfms

    def _batch_inference(
        self, inputs: List[dict], instances: Optional[List[Instances]] = None
    ) -> List[Instances]:
        """``model.inference(..., do_postprocess=False)`` in chunks of ``batch_size``."""
        outputs = []
        for i in range(0, len(inputs), self.batch_size):
            given = None if instances is None else instances[i : i + self.batch_size]
            outputs.extend(
                self.model.inference(inputs[i : i + self.batch_size], given, do_postprocess=False)
            )
        return outputs

    def merge(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        image_hw: Tuple[int, int],
    ) -> Instances:
        """Merge detections pooled from all versions, like the model's own box inference.

        Args:
            boxes (Tensor): (N, 4) boxes in original-image coordinates.
            scores (Tensor): (N,) scores.
            classes (Tensor): (N,) class ids.
            image_hw (tuple): original (height, width).

        Returns:
            Instances with pred_boxes, scores, pred_classes.
        """
        roi_heads = self.model.roi_heads
        predictor = roi_heads.box_predictor
        if isinstance(predictor, nn.ModuleList):  # cascade: the last stage's settings
            predictor = predictor[-1]
        scores_2d = boxes.new_zeros(len(boxes), predictor.num_classes + 1)  # + background
        scores_2d[torch.arange(len(boxes), device=boxes.device), classes] = scores.to(
            scores_2d.dtype
        )
        soft_nms = roi_heads.soft_nms_params if getattr(roi_heads, "use_soft_nms", False) else None
        merged, _ = eva_fast_rcnn_inference(
            [boxes],
            [scores_2d],
            [image_hw],
            MERGE_SCORE_THRESH,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
            soft_nms=soft_nms,
        )
        return merged[0]

    def _inference_one_image(self, input: dict) -> Dict[str, Instances]:
        image = input["image"]
        orig_hw = (
            int(input.get("height", image.shape[1])),
            int(input.get("width", image.shape[2])),
        )
        inputs, tfms = self.augment(input)
        with self._box_only():
            outputs = self._batch_inference(inputs)
        boxes = [
            torch.from_numpy(tfm.inverse().apply_box(o.pred_boxes.tensor.cpu().numpy())).to(
                o.pred_boxes.tensor
            )
            for o, tfm in zip(outputs, tfms)
        ]
        merged = self.merge(
            torch.cat(boxes).float(),
            torch.cat([o.scores for o in outputs]),
            torch.cat([o.pred_classes for o in outputs]),
            orig_hw,
        )
        if not self._mask_on():
            return {"instances": merged}
        given = []
        for inp, tfm in zip(inputs, tfms):
            aug_boxes = tfm.apply_box(merged.pred_boxes.tensor.cpu().numpy())
            given.append(
                Instances(
                    tuple(inp["image"].shape[1:3]),
                    pred_boxes=Boxes(torch.from_numpy(aug_boxes).float()),
                    pred_classes=merged.pred_classes,
                    scores=merged.scores,
                )
            )
        outputs = self._batch_inference(inputs, given)
        masks = []
        for o, tfm in zip(outputs, tfms):
            flipped = any(isinstance(t, HFlipTransform) for t in tfm.transforms)
            masks.append(o.pred_masks.flip(dims=[3]) if flipped else o.pred_masks)
        merged.pred_masks = torch.stack(masks).mean(dim=0)  # (N, 1, M, M)
        thresh = getattr(self.model.roi_heads, "maskness_thresh", None)
        if thresh is not None:
            merged.scores = merged.scores * maskness_scores(merged.pred_masks, thresh)
        return {"instances": detector_postprocess(merged, *orig_hw)}

    def _mask_on(self) -> bool:
        return bool(getattr(self.model.roi_heads, "mask_on", False))

    def forward(self, batched_inputs: List[dict]) -> List[Dict[str, Instances]]:
        if self.training:
            raise RuntimeError("GeneralizedRCNNWithTTA is for inference; call .eval() first")
        with torch.no_grad():
            return [self._inference_one_image(x) for x in batched_inputs]


def tta_settings(cfg) -> dict:
    """``cfg.test.aug`` merged over its defaults (:func:`eva_det.config.defaults.test_defaults`).

    Configs without a ``test`` section get the defaults (TTA off), so ``test.aug.enabled=True``
    on the command line works for every config. ``max_size=None`` means the model's
    ``square_pad`` (resolved by :func:`build_tta_model`).

    Raises:
        InputError: an unknown ``test.aug`` key.
    """
    from eva_det.config.defaults import test_defaults

    out = read_section(cfg, "test.aug", test_defaults()["aug"])
    if isinstance(out["min_sizes"], int):
        out["min_sizes"] = [out["min_sizes"]]
    return out


def build_tta_model(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`GeneralizedRCNNWithTTA` if ``test.aug.enabled``, else itself."""
    aug = tta_settings(cfg)
    if not aug["enabled"]:
        return model
    unwrapped = unwrap_ddp(model)
    max_size = aug["max_size"]
    if max_size is None:
        max_size = GeneralizedRCNNWithTTA._square_pad(unwrapped)
        if not max_size:
            raise ValueError(
                "test.aug.max_size=None means the model's square_pad, but "
                "model.backbone.square_pad is 0: set test.aug.max_size"
            )
    logger.info(
        "Test-time augmentation: min_sizes=%s max_size=%s flip=%s",
        aug["min_sizes"],
        max_size,
        aug["flip"],
    )
    return GeneralizedRCNNWithTTA(unwrapped, aug["min_sizes"], max_size, flip=aug["flip"])
