"""Cascade ROI heads with EVA's inference options (same config keys as the official fork).

``model.roi_heads.use_soft_nms``, ``.method``, ``.iou_threshold``, ``.sigma``, ``.class_wise``,
``.override_score_thresh``, ``.maskness_thresh`` behave as in the official EVA code;
``.soft_nms_topk`` is an eva_det opt-in cap (default None: no cap, as official).
Training is unchanged from detectron2's ``CascadeROIHeads``.
"""

from typing import Dict, List, Optional

import torch
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Instances

from .inference import SoftNMSParams, eva_fast_rcnn_inference
from .maskness import maskness_scores

__all__ = ["EVACascadeROIHeads"]


class EVACascadeROIHeads(CascadeROIHeads):
    """detectron2's ``CascadeROIHeads`` plus EVA's evaluation protocol.

    Args (in addition to ``CascadeROIHeads``'):
        use_soft_nms (bool): replace per-class NMS by soft-NMS.
        method (str): soft-NMS decay, "linear" | "gaussian" | "naive".
        iou_threshold (float): soft-NMS IoU threshold.
        sigma (float): gaussian soft-NMS width.
        class_wise (bool): soft-NMS within classes (True, EVA-01) or across classes (False).
        override_score_thresh (float or None): replaces the last predictor's test score threshold.
        maskness_thresh (float or None): multiply each score by the mean mask probability above
            this threshold (0 if none); None disables it.
        soft_nms_topk (int or None): cap on detections per image after soft-NMS (None: no cap).
    """

    def __init__(
        self,
        *,
        use_soft_nms: bool = False,
        method: str = "linear",
        iou_threshold: float = 0.3,
        sigma: float = 0.5,
        class_wise: bool = True,
        override_score_thresh: Optional[float] = None,
        maskness_thresh: Optional[float] = None,
        soft_nms_topk: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_soft_nms = use_soft_nms
        self.soft_nms_params = SoftNMSParams(
            method, iou_threshold, sigma, class_wise, soft_nms_topk
        )
        self.override_score_thresh = override_score_thresh
        self.maskness_thresh = maskness_thresh

    def forward(self, images, features, proposals, targets=None):
        if self.training:
            return super().forward(images, features, proposals, targets)
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        if self.maskness_thresh is not None:
            self._apply_maskness(pred_instances)
        return pred_instances, {}

    def _apply_maskness(self, pred_instances: List[Instances]) -> None:
        """Rescore in place. The official code's re-sort afterwards has no effect; none here."""
        for inst in pred_instances:
            if not inst.has("pred_masks"):
                raise ValueError(
                    "model.roi_heads.maskness_thresh needs a mask head (mask_on); "
                    "set it to None for box-only models"
                )
            inst.scores = inst.scores * maskness_scores(inst.pred_masks, self.maskness_thresh)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals, targets=None):
        if self.training:
            return super()._forward_box(features, proposals, targets)
        features = [features[f] for f in self.box_in_features]
        head_outputs = []  # (predictor, predictions, proposals) per stage
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        # Class probabilities averaged over stages, boxes of the last stage.
        scores_per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        scores = [
            sum(list(per_image)) * (1.0 / self.num_cascade_stages)
            for per_image in zip(*scores_per_stage)
        ]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        score_thresh = predictor.test_score_thresh
        if self.override_score_thresh is not None:
            score_thresh = self.override_score_thresh
        pred_instances, _ = eva_fast_rcnn_inference(
            boxes,
            scores,
            image_sizes,
            score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
            soft_nms=self.soft_nms_params if self.use_soft_nms else None,
        )
        return pred_instances
