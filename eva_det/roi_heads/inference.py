"""Per-image box inference with EVA's options: score-threshold override and soft-NMS.

Without soft-NMS this is detectron2's ``fast_rcnn_inference_single_image`` (threshold, per-class
NMS, top-k). With soft-NMS it follows EVA: threshold, then one soft-NMS over the image's boxes
(per class when ``class_wise``; class-agnostic otherwise), decayed scores as output scores, and no
top-k cap unless ``soft_nms_topk`` asks for one.
"""

from typing import List, Optional, Tuple

import torch
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances

from eva_det.layers import batched_soft_nms

__all__ = ["SoftNMSParams", "eva_fast_rcnn_inference"]

SOFT_NMS_MIN_SCORE = 1e-3  # mmcv's min_score as called by EVA


class SoftNMSParams:
    """Soft-NMS settings of the ROI heads.

    Args:
        method (str): "linear", "gaussian" or "naive".
        iou_threshold (float): IoU at or above which linear/naive decay applies.
        sigma (float): gaussian width.
        class_wise (bool): suppress within each class only (EVA-01 behaviour); False suppresses
            across classes (EVA-02's default).
        topk (int or None): keep at most this many detections per image (None: keep all, as the
            official code does).
        min_score (float): boxes whose decayed score falls below this are dropped.
    """

    def __init__(
        self,
        method: str = "linear",
        iou_threshold: float = 0.3,
        sigma: float = 0.5,
        class_wise: bool = True,
        topk: Optional[int] = None,
        min_score: float = SOFT_NMS_MIN_SCORE,
    ):
        if method not in ("linear", "gaussian", "naive"):
            raise ValueError(
                f"model.roi_heads.method must be 'linear', 'gaussian' or 'naive', got {method!r}"
            )
        self.method, self.iou_threshold, self.sigma = method, iou_threshold, sigma
        self.class_wise, self.topk, self.min_score = class_wise, topk, min_score


def _soft_nms_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    params: SoftNMSParams,
) -> Tuple[Instances, torch.Tensor]:
    """boxes (R, K*4 or 4), scores (R, K+1) -> Instances, kept proposal indices."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_reg = boxes.shape[1] // 4
    boxes = Boxes(boxes.reshape(-1, 4))
    boxes.clip(image_shape)
    boxes = boxes.tensor.view(-1, num_reg, 4)  # (R, num_reg, 4)

    filter_mask = scores > score_thresh  # (R, K)
    filter_inds = filter_mask.nonzero()  # (R', 2): proposal index, class
    boxes = boxes[filter_inds[:, 0], 0] if num_reg == 1 else boxes[filter_mask]
    scores = scores[filter_mask]

    classes = filter_inds[:, 1]
    groups = classes if params.class_wise else torch.zeros_like(classes)
    keep, new_scores = batched_soft_nms(
        boxes,
        scores,
        groups,
        method=params.method,
        iou_threshold=params.iou_threshold,
        sigma=params.sigma,
        min_score=params.min_score,
    )
    if params.topk is not None and params.topk >= 0:
        keep, new_scores = keep[: params.topk], new_scores[: params.topk]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = new_scores
    result.pred_classes = classes[keep]
    return result, filter_inds[keep, 0]


def eva_fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    soft_nms: Optional[SoftNMSParams] = None,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Box inference for a batch of images.

    Args:
        boxes (list[Tensor]): per image (Ri, K*4) or (Ri, 4) predicted boxes.
        scores (list[Tensor]): per image (Ri, K+1) class probabilities (last column background).
        image_shapes (list[tuple]): per image (height, width).
        score_thresh (float): keep (box, class) pairs with a score strictly above this.
        nms_thresh (float): NMS IoU threshold (hard NMS only).
        topk_per_image (int): detections kept per image by hard NMS (< 0: all).
        soft_nms (SoftNMSParams or None): use soft-NMS with these settings instead of NMS.

    Returns:
        list[Instances] with pred_boxes, scores, pred_classes; list of kept proposal indices.
    """
    results = []
    for b, s, shape in zip(boxes, scores, image_shapes):
        if soft_nms is None:
            results.append(
                fast_rcnn_inference_single_image(
                    b, s, shape, score_thresh, nms_thresh, topk_per_image
                )
            )
        else:
            results.append(_soft_nms_single_image(b, s, shape, score_thresh, soft_nms))
    return [r[0] for r in results], [r[1] for r in results]
