"""Test-time augmentation: tiny EVA-01 / EVA-02 detectors, merged result vs. passes done by hand.

The reference runs the model on the resized and the flipped image itself (PIL resize, tensor
flip), maps boxes back with explicit arithmetic and merges them with torchvision's NMS or the
step-by-step soft-NMS port, then averages the mask-head outputs on the merged boxes.
"""

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
from helpers.tta import tiny_cfg
from PIL import Image
from torchvision.ops import batched_nms

from eva_det.errors import InputError
from eva_det.modeling.tta import GeneralizedRCNNWithTTA, build_tta_model, tta_settings
from eva_det.utils.testing import soft_nms_sequential_reference

H, W = 96, 128  # test image


def tiny_model(backbone="eva01", square_pad=128, **roi_heads):
    cfg = tiny_cfg(backbone, square_pad)
    cfg.model.roi_heads.update(roi_heads)
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def make_image() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 60, (3, H, W), generator=g, dtype=torch.uint8)
    img[:, 20:60, 30:70] = torch.tensor([200, 40, 40], dtype=torch.uint8)[:, None, None]
    img[:, 50:90, 80:120] = torch.tensor([40, 200, 90], dtype=torch.uint8)[:, None, None]
    return img


def run_pass(model, image, given=None):
    """One forward of ``model`` on a (C, h, w) image; box-only unless ``given`` boxes."""
    roi = model.roi_heads
    saved = roi.mask_on, roi.maskness_thresh
    if given is None:
        roi.mask_on, roi.maskness_thresh = False, None
    try:
        with torch.no_grad():
            return model.inference([{"image": image}], given, do_postprocess=False)[0]
    finally:
        roi.mask_on, roi.maskness_thresh = saved


def reference_tta(model, image, min_size, max_size):
    """Flip + one scale by hand (the image is landscape: short edge = height)."""
    scale = min(min_size / H, max_size / W)
    h2, w2 = int(H * scale + 0.5), int(W * scale + 0.5)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w2, h2), Image.BILINEAR)
    small = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).contiguous()
    versions = [small, small.flip(-1)]  # (C, h2, w2) each

    sx, sy = W / w2, H / h2
    boxes, scores, classes = [], [], []
    for k, img in enumerate(versions):
        out = run_pass(model, img)
        b = out.pred_boxes.tensor.clone()
        if k == 1:  # undo the flip: x -> w2 - x (x1 and x2 swap)
            b = torch.stack([w2 - b[:, 2], b[:, 1], w2 - b[:, 0], b[:, 3]], dim=1)
        b = b * torch.tensor([sx, sy, sx, sy], dtype=b.dtype)
        boxes.append(b)
        scores.append(out.scores)
        classes.append(out.pred_classes)
    boxes, scores, classes = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
    assert len(boxes) > 0, "the tiny model should detect something"

    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    roi = model.roi_heads
    pred = roi.box_predictor[-1]
    if roi.use_soft_nms:
        p = roi.soft_nms_params
        groups = classes if p.class_wise else torch.zeros_like(classes)
        keep, new_scores = soft_nms_sequential_reference(
            boxes, scores, groups, p.method, p.iou_threshold, p.sigma, p.min_score
        )
    else:
        keep = batched_nms(boxes, scores, classes, pred.test_nms_thresh)
        keep = keep[: pred.test_topk_per_image]
        new_scores = scores[keep]
    boxes, scores, classes = boxes[keep], new_scores, classes[keep]

    # mask head on the merged boxes in both versions, flipped masks flipped back, averaged
    fwd = boxes * torch.tensor([w2 / W, h2 / H, w2 / W, h2 / H], dtype=boxes.dtype)
    flipped = torch.stack([w2 - fwd[:, 2], fwd[:, 1], w2 - fwd[:, 0], fwd[:, 3]], dim=1)
    masks = []
    for k, (img, b) in enumerate(zip(versions, [fwd, flipped])):
        given = Instances((h2, w2), pred_boxes=Boxes(b), pred_classes=classes, scores=scores)
        m = run_pass(model, img, [given]).pred_masks
        masks.append(m.flip(-1) if k == 1 else m)
    avg = (masks[0] + masks[1]) / 2
    if roi.maskness_thresh is not None:
        above = (avg > roi.maskness_thresh).float()
        n = above.sum(dim=(1, 2, 3))
        scores = scores * torch.where(n > 0, (avg * above).sum(dim=(1, 2, 3)) / n.clamp(min=1), 0)
    result = Instances((H, W), pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes)
    result.pred_masks = avg
    return detector_postprocess(result, H, W)


@pytest.mark.parametrize(
    "backbone,square_pad,roi_heads",
    [
        ("eva01", 128, {}),
        ("eva01", 128, dict(use_soft_nms=True, class_wise=True, maskness_thresh=0.5)),
        ("eva02", 0, dict(use_soft_nms=True, class_wise=False, iou_threshold=0.6)),
    ],
)
def test_flip_single_scale_equals_manual_merge(backbone, square_pad, roi_heads):
    model = tiny_model(backbone, square_pad, **roi_heads)
    image = make_image()
    tta = GeneralizedRCNNWithTTA(model, min_sizes=[72], max_size=128, flip=True).eval()
    with torch.no_grad():
        got = tta([{"image": image, "height": H, "width": W}])[0]["instances"]
    ref = reference_tta(model, image, 72, 128)

    assert got.image_size == (H, W)
    assert set(got.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert len(got) == len(ref) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-6, rtol=0)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    assert got.pred_masks.shape == (len(ref), H, W) and got.pred_masks.dtype == torch.bool
    assert torch.equal(got.pred_masks, ref.pred_masks)
    # the roi heads were restored after the box-only passes
    assert model.roi_heads.mask_on
    assert model.roi_heads.maskness_thresh == roi_heads.get("maskness_thresh")


@pytest.mark.parametrize("backbone", ["eva01", "eva02"])
def test_multiscale_flip_runs_at_every_grid(backbone):
    """square_pad=0: each scale gets its own token grid (rel-pos / RoPE resized per grid)."""
    model = tiny_model(backbone, square_pad=0)
    tta = GeneralizedRCNNWithTTA(model, min_sizes=[64, 96], max_size=[128, 128], flip=True)
    inputs, tfms = tta.augment({"image": make_image(), "height": H, "width": W})
    assert [tuple(x["image"].shape[1:]) for x in inputs] == [(64, 85)] * 2 + [(96, 128)] * 2
    with torch.no_grad():
        inst = tta.eval()([{"image": make_image(), "height": H, "width": W}])[0]["instances"]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (H, W)
    b = inst.pred_boxes.tensor
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
    assert ((inst.scores > 0) & (inst.scores <= 1)).all()
    if backbone == "eva02":  # unpadded 64x85 and 96x128 inputs: 4x5 and 6x8 global grids
        grids = {k[:2] for k in model.backbone.net.rope._cache}
        assert {(4, 5), (6, 8)} <= grids


def test_no_detections_and_box_only_model():
    model = tiny_model("eva01", override_score_thresh=1.01)
    tta = GeneralizedRCNNWithTTA(model, [96], 128, flip=True).eval()
    with torch.no_grad():
        inst = tta([{"image": make_image(), "height": H, "width": W}])[0]["instances"]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, H, W)

    box_only = tiny_model("eva01")
    box_only.roi_heads.mask_on = False
    tta = GeneralizedRCNNWithTTA(box_only, [96], 128, flip=False).eval()
    with torch.no_grad():
        inst = tta([{"image": make_image(), "height": H, "width": W}])[0]["instances"]
    assert len(inst) > 0 and not inst.has("pred_masks")


def test_input_already_resized_maps_back_to_original_size():
    model = tiny_model("eva01")
    tta = GeneralizedRCNNWithTTA(model, [96], 128, flip=False).eval()
    with torch.no_grad():  # the loader resized a 192x256 original to 96x128
        inst = tta([{"image": make_image(), "height": 2 * H, "width": 2 * W}])[0]["instances"]
        plain = run_pass(model, make_image())
    assert inst.image_size == (2 * H, 2 * W) and inst.pred_masks.shape[1:] == (2 * H, 2 * W)
    # a single un-flipped pass at the input's own size: NMS keeps the model's own detections
    top = plain.scores.argmax()
    i = int(torch.nonzero(inst.scores == plain.scores[top])[0])
    torch.testing.assert_close(inst.pred_boxes.tensor[i], plain.pred_boxes.tensor[top] * 2)


def test_scale_above_square_pad_is_rejected():
    model = tiny_model("eva01", square_pad=128)
    with pytest.raises(ValueError, match="square_pad=128"):
        GeneralizedRCNNWithTTA(model, [96, 160], 160)
    with pytest.raises(ValueError, match="one per min size"):
        GeneralizedRCNNWithTTA(model, [64, 96], [128])


def test_config_keys_and_defaults():
    cfg = tiny_cfg()
    assert cfg.test.aug.enabled is False  # every project config carries the `test` section
    del cfg["test"]  # configs without it fall back to configs/common/test.py
    aug = tta_settings(cfg)
    assert aug["enabled"] is False and aug["flip"] is True and aug["max_size"] is None
    model = tiny_model()
    assert build_tta_model(cfg, model) is model

    cfg = tiny_cfg(overrides=["test.aug.enabled=True", "test.aug.min_sizes=[64,96]"])
    wrapped = build_tta_model(cfg, model)
    assert isinstance(wrapped, GeneralizedRCNNWithTTA) and wrapped.model is model
    assert wrapped.min_sizes == [64, 96] and wrapped.max_sizes == [128, 128]  # = square_pad
    assert wrapped.flip

    cfg = tiny_cfg(overrides=["test.aug.enabled=True", "test.aug.max_size=256"])
    with pytest.raises(ValueError, match="model.backbone.square_pad=256"):
        build_tta_model(cfg, model)
    cfg = tiny_cfg(overrides=["test.aug.enabled=True", "test.aug.scales=[1]"])
    with pytest.raises(InputError, match="scales"):
        tta_settings(cfg)
