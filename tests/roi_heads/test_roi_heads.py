"""EVA ROI-head inference options: score override, soft-NMS wiring, maskness, top-k opt-in."""

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Instances
from helpers.shrink import EVA01_SHRINK, load_config

from eva_det.roi_heads import SoftNMSParams, eva_fast_rcnn_inference, maskness_scores
from eva_det.utils.testing import soft_nms_sequential_reference


def _random_predictions(num_props=40, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_props, 2, generator=g) * 80
    wh = torch.rand(num_props, 2, generator=g) * 30 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)  # class-agnostic (R, 4)
    logits = torch.randn(num_props, num_classes + 1, generator=g) * 2
    return boxes, logits.softmax(-1)


def test_hard_nms_path_equals_detectron2():
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

    boxes, scores = _random_predictions()
    ours, _ = eva_fast_rcnn_inference([boxes], [scores], [(100, 120)], 0.05, 0.5, 100)
    ref, _ = fast_rcnn_inference([boxes], [scores], [(100, 120)], 0.05, 0.5, 100)
    assert torch.equal(ours[0].scores, ref[0].scores)
    assert torch.equal(ours[0].pred_boxes.tensor, ref[0].pred_boxes.tensor)


@pytest.mark.parametrize("class_wise", [True, False])
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_path_matches_sequential_reference(class_wise, method):
    boxes, scores = _random_predictions(seed=3)
    params = SoftNMSParams(method=method, iou_threshold=0.6, class_wise=class_wise)
    out, kept = eva_fast_rcnn_inference([boxes], [scores], [(100, 120)], 0.0, 0.5, 100, params)
    # independent: threshold 0, every (proposal, class) pair, one sequential soft-NMS
    fg = scores[:, :-1]
    inds = (fg > 0).nonzero()
    clipped = torch.stack(
        [
            boxes[:, 0].clamp(0, 120),
            boxes[:, 1].clamp(0, 100),
            boxes[:, 2].clamp(0, 120),
            boxes[:, 3].clamp(0, 100),
        ],
        dim=1,
    )
    cand_boxes, cand_scores, cand_cls = clipped[inds[:, 0]], fg[inds[:, 0], inds[:, 1]], inds[:, 1]
    groups = cand_cls if class_wise else torch.zeros_like(cand_cls)
    keep, ref_scores = soft_nms_sequential_reference(
        cand_boxes, cand_scores, groups, method=method, iou_threshold=0.6, sigma=0.5
    )
    assert len(out[0]) == len(keep)
    if class_wise:
        assert len(keep) > 100  # no top-k cap by default
    torch.testing.assert_close(out[0].scores, ref_scores, rtol=1e-5, atol=1e-7)
    assert torch.equal(out[0].pred_classes, cand_cls[keep])
    assert torch.equal(kept[0], inds[keep, 0])


def test_soft_nms_topk_opt_in_caps_detections():
    boxes, scores = _random_predictions(seed=4)
    params = SoftNMSParams(iou_threshold=0.6, topk=7)
    out, _ = eva_fast_rcnn_inference([boxes], [scores], [(100, 120)], 0.0, 0.5, 100, params)
    assert len(out[0]) == 7
    assert torch.all(out[0].scores[:-1] >= out[0].scores[1:])


def test_maskness_formula():
    probs = torch.tensor([0.9, 0.2, 0.7, 0.4]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    probs[1] = 0.1  # nothing above the threshold -> 0
    probs[2] = torch.tensor([0.6, 0.6, 0.6, 0.6]).view(1, 2, 2)
    got = maskness_scores(probs, 0.5)
    torch.testing.assert_close(got, torch.tensor([(0.9 + 0.7) / 2, 0.0, 0.6]))


def test_bad_soft_nms_method_names_the_key():
    with pytest.raises(ValueError, match="model.roi_heads.method"):
        SoftNMSParams(method="box")


def _tiny_model(extra):
    cfg = load_config(
        "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py", EVA01_SHRINK + extra
    )
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


@pytest.mark.slow  # several full-width heads on CPU
def test_official_eval_flags_change_outputs_as_specified():
    flags = [
        "model.roi_heads.use_soft_nms=True",
        "model.roi_heads.method=linear",
        "model.roi_heads.iou_threshold=0.6",
        "model.roi_heads.override_score_thresh=0.0",
        # 2 proposals x 80 classes: the mask head runs on every kept box (CPU time)
        "model.proposal_generator.post_nms_topk=[1000,2]",
    ]
    image = {"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}
    base = _tiny_model(flags)
    with torch.no_grad():
        plain = base([image])[0]["instances"]
        mask = _tiny_model(flags + ["model.roi_heads.maskness_thresh=0.5"])
        masked = mask([image])[0]["instances"]
    assert len(plain) > 100  # threshold 0 + soft-NMS keeps far more than the 100 cap
    assert len(masked) == len(plain)
    assert torch.equal(masked.pred_boxes.tensor, plain.pred_boxes.tensor)
    # maskness only lowers scores (factor in [0, 1]) and never reorders boxes
    assert torch.all(masked.scores <= plain.scores + 1e-7)
    assert isinstance(masked, Instances)


def test_maskness_applied_to_roi_head_outputs():
    model = _tiny_model(["model.roi_heads.maskness_thresh=0.5"])
    inst = Instances((64, 64))
    from detectron2.structures import Boxes

    inst.pred_boxes = Boxes(torch.tensor([[4.0, 4.0, 40.0, 40.0], [10.0, 20.0, 60.0, 50.0]]))
    inst.scores = torch.tensor([0.9, 0.5])
    inst.pred_classes = torch.tensor([1, 2])
    inst.pred_masks = torch.rand(2, 1, 28, 28)
    expected = inst.scores * maskness_scores(inst.pred_masks, 0.5)
    model.roi_heads._apply_maskness([inst])
    torch.testing.assert_close(inst.scores, expected)
