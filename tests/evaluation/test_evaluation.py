"""eva_det.evaluation against independent references.

COCO: our evaluators (both backends), fed detectron2 ``Instances`` through ``process`` /
``evaluate``, must give the numbers plain pycocotools ``COCOeval`` gives on the same detections.
LVIS: our evaluator must give LVIS-api's numbers (``lvis`` package, with its numpy >= 1.24
``np.float`` crash worked around in this test only), and a hand-computed AP that depends on the
federated and not-exhaustive rules.
"""

import contextlib
import copy
import importlib
import io
import json
import math
import os
import sys
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator
from detectron2.evaluation import LVISEvaluator as D2LVISEvaluator
from detectron2.structures import Boxes, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eva_det.evaluation import COCOEvaluator, LVISEvaluator, limit_dets_per_image
from eva_det.utils.atomic import atomic_write_json
from eva_det.utils.testing import make_detections, make_ground_truth

TOL = 1e-6  # on metrics in percent


# ------------------------------------------------------------------------------------------------
# helpers


@contextlib.contextmanager
def registered_dataset(name, gt, json_file, *, coco_ids):
    """Register ``name`` (json_file + thing_classes [+ COCO id mapping]) for the test's duration."""
    with open(json_file, "w") as f:
        json.dump(gt, f)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    names = {c["id"]: c["name"] for c in gt["categories"]}
    DatasetCatalog.register(name, lambda: [])
    meta = MetadataCatalog.get(name)
    meta.set(json_file=str(json_file), thing_classes=[names[c] for c in cat_ids])
    if coco_ids:
        meta.set(thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)})
    try:
        yield
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def model_io(gt, dets, class_of, with_masks=True):
    """detectron2 model inputs / outputs (``Instances`` per image) holding ``dets``."""
    per_image = defaultdict(list)
    for d in dets:
        per_image[d["image_id"]].append(d)
    inputs, outputs = [], []
    for img in gt["images"]:
        ds, hw = per_image[img["id"]], (img["height"], img["width"])
        xyxy = np.array([d["bbox"] for d in ds], dtype=np.float32).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]  # integer boxes: exact in float32
        inst = Instances(hw)
        inst.pred_boxes = Boxes(torch.from_numpy(xyxy))
        inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
        inst.pred_classes = torch.tensor([class_of[d["category_id"]] for d in ds])
        if with_masks:
            masks = np.zeros((0, *hw), dtype=bool)
            if ds:
                masks = mask_util.decode([d["segmentation"] for d in ds]).transpose(2, 0, 1)
            inst.pred_masks = torch.from_numpy(masks.astype(bool))
        inputs.append({"image_id": img["id"], "height": hw[0], "width": hw[1]})
        outputs.append({"instances": inst})
    return inputs, outputs


def run_evaluator(evaluator, inputs, outputs, batch_size=4, **evaluate_kwargs):
    """Feed ``inputs`` / ``outputs`` in batches through ``process`` and return ``evaluate()``."""
    evaluator.reset()
    for i in range(0, len(inputs), batch_size):
        evaluator.process(inputs[i : i + batch_size], outputs[i : i + batch_size])
    return evaluator.evaluate(**evaluate_kwargs)


def _mean_valid(p):
    p = p[p > -1]
    return float(np.mean(p) * 100) if p.size else float("nan")


def pycocotools_reference(gt_file, dets, iou_type, max_dets=(1, 10, 100)):
    """Plain pycocotools COCOeval on ``dets``: detectron2's metric names, in percent."""
    results = copy.deepcopy(dets)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
        coco_eval.accumulate()
        if list(max_dets) == [1, 10, 100]:
            coco_eval.summarize()
    # COCOeval sorts maxDets: index 2 is the largest limit (10 for detectron2's [1, 10, 3])
    prec = coco_eval.eval["precision"][..., 2]  # (T, R, K, A)
    iou_idx = {t: int(np.argmin(np.abs(coco_eval.params.iouThrs - t))) for t in (0.5, 0.75)}
    ref = {
        "AP": _mean_valid(prec[..., 0]),
        "AP50": _mean_valid(prec[iou_idx[0.5], ..., 0]),
        "AP75": _mean_valid(prec[iou_idx[0.75], ..., 0]),
        "APs": _mean_valid(prec[..., 1]),
        "APm": _mean_valid(prec[..., 2]),
        "APl": _mean_valid(prec[..., 3]),
    }
    if list(max_dets) == [1, 10, 100]:  # the reduction above is pycocotools' own summary
        np.testing.assert_allclose(list(ref.values()), coco_eval.stats[:6] * 100, atol=1e-12)
    for k, cat in enumerate(coco_gt.loadCats(sorted(coco_gt.getCatIds()))):
        ref["AP-" + cat["name"]] = _mean_valid(prec[:, :, k, 0])
    return ref


def assert_metrics_equal(ours, ref):
    assert set(ours) == set(ref)
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=TOL), key


# ------------------------------------------------------------------------------------------------
# COCO


@pytest.fixture(scope="module")
def coco_data():
    gt = make_ground_truth(num_images=30, num_categories=4, seed=0, crowd_prob=0.08)
    dets = make_detections(gt, seed=1)
    assert any(a["iscrowd"] for a in gt["annotations"])  # crowd regions are exercised
    return gt, dets


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_matches_pycocotools(coco_data, tmp_path, backend):
    gt, dets = coco_data
    gt_file, out_dir = tmp_path / "gt.json", tmp_path / "out"
    class_of = {c: i for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    with registered_dataset("eva_det_test_coco", gt, gt_file, coco_ids=True):
        evaluator = COCOEvaluator(
            "eva_det_test_coco", distributed=False, output_dir=str(out_dir), backend=backend
        )
        assert isinstance(evaluator, D2COCOEvaluator)
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))

    assert set(results) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        ref = pycocotools_reference(gt_file, dets, iou_type)
        assert 5.0 < ref["AP"] < 95.0  # a non-trivial operating point
        assert_metrics_equal(results[iou_type], ref)

    # the results json holds the detections with dataset category ids, and nothing else
    with open(out_dir / "coco_instances_results.json") as f:
        written = json.load(f)
    assert written == dets
    assert sorted(os.listdir(out_dir)) == [
        "coco_instances_results.json",
        "instances_predictions.pth",
    ]


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("max_dets", [3, 300])
def test_coco_max_dets_per_image(coco_data, tmp_path, backend, max_dets):
    gt, dets = coco_data
    class_of = {c: i for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    with registered_dataset("eva_det_test_coco_maxdets", gt, tmp_path / "gt.json", coco_ids=True):
        evaluator = COCOEvaluator(
            "eva_det_test_coco_maxdets",
            tasks=("bbox",),
            distributed=False,
            max_dets_per_image=max_dets,
            backend=backend,
        )
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of, with_masks=False))
    ref = pycocotools_reference(tmp_path / "gt.json", dets, "bbox", max_dets=(1, 10, max_dets))
    assert_metrics_equal(results["bbox"], ref)


def test_coco_img_ids_subset(coco_data, tmp_path):
    gt, dets = coco_data
    class_of = {c: i for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    img_ids = [img["id"] for img in gt["images"][::2]]
    sub_gt = dict(gt, images=[i for i in gt["images"] if i["id"] in img_ids])
    sub_gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in img_ids]
    with open(tmp_path / "sub.json", "w") as f:
        json.dump(sub_gt, f)
    with registered_dataset("eva_det_test_coco_sub", gt, tmp_path / "gt.json", coco_ids=True):
        evaluator = COCOEvaluator("eva_det_test_coco_sub", tasks=("bbox",), distributed=False)
        results = run_evaluator(
            evaluator, *model_io(gt, dets, class_of, with_masks=False), img_ids=img_ids
        )
    sub_dets = [d for d in dets if d["image_id"] in img_ids]
    assert_metrics_equal(
        results["bbox"], pycocotools_reference(tmp_path / "sub.json", sub_dets, "bbox")
    )


def _keypoint_data(num_images=20, seed=0):
    """Person boxes with 17 COCO keypoints, and jittered keypoint detections (+ false ones)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(num_images):
        img = {"id": 1 + i, "height": 200, "width": 200}
        images.append(img)
        for _ in range(int(rng.integers(1, 5))):
            x, y = (int(v) for v in rng.integers(0, 100, size=2))
            w, h = (int(v) for v in rng.integers(20, 100, size=2))
            kx = rng.integers(x, x + w, size=17)
            ky = rng.integers(y, y + h, size=17)
            vis = rng.choice([0, 1, 2], size=17, p=[0.2, 0.3, 0.5])
            kps = np.stack([kx * (vis > 0), ky * (vis > 0), vis], axis=1)
            ann = {"id": len(anns) + 1, "image_id": img["id"], "category_id": 1, "iscrowd": 0}
            ann.update(bbox=[float(x), float(y), float(w), float(h)], area=float(w * h))
            ann.update(keypoints=kps.reshape(-1).tolist(), num_keypoints=int((vis > 0).sum()))
            anns.append(ann)
            for noise in [3.0] + ([40.0] if rng.random() < 0.5 else []):
                det_xy = np.stack([kx, ky], axis=1) + np.round(rng.normal(0, noise, (17, 2)))
                det = np.concatenate([det_xy, np.full((17, 1), 1.0)], axis=1)  # (17, 3)
                dets.append(
                    {
                        "image_id": img["id"],
                        "category_id": 1,
                        "bbox": [float(x), float(y), float(w), float(h)],
                        "score": float(np.float32(rng.uniform(0.1, 1.0))),
                        "keypoints": det.reshape(-1).tolist(),
                    }
                )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    return gt, dets


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_keypoints_match_pycocotools(tmp_path, backend):
    gt, dets = _keypoint_data()
    per_image = defaultdict(list)
    for d in dets:
        per_image[d["image_id"]].append(d)
    inputs, outputs = [], []
    for img in gt["images"]:
        ds = per_image[img["id"]]
        inst = Instances((img["height"], img["width"]))
        xyxy = np.array([d["bbox"] for d in ds], dtype=np.float32).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        inst.pred_boxes = Boxes(torch.from_numpy(xyxy))
        inst.scores = torch.tensor([d["score"] for d in ds], dtype=torch.float32)
        inst.pred_classes = torch.zeros(len(ds), dtype=torch.int64)
        kps = torch.tensor([d["keypoints"] for d in ds], dtype=torch.float32).reshape(-1, 17, 3)
        kps[:, :, :2] += 0.5  # detectron2 subtracts 0.5 when writing COCO keypoints
        inst.pred_keypoints = kps
        inputs.append({"image_id": img["id"], "height": img["height"], "width": img["width"]})
        outputs.append({"instances": inst})
    with registered_dataset("eva_det_test_coco_kp", gt, tmp_path / "gt.json", coco_ids=True):
        evaluator = COCOEvaluator(
            "eva_det_test_coco_kp", tasks=("keypoints",), distributed=False, backend=backend
        )
        results = run_evaluator(evaluator, inputs, outputs)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "keypoints")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    ref = dict(zip(["AP", "AP50", "AP75", "APm", "APl"], coco_eval.stats[:5] * 100))
    assert 5.0 < ref["AP"] < 95.0
    assert_metrics_equal(results["keypoints"], ref)


def _proposal_outputs(gt, dets):
    """detectron2 ``proposals`` outputs (XYXY boxes + objectness) made of ``dets``' boxes."""
    per_image = defaultdict(list)
    for d in dets:
        per_image[d["image_id"]].append(d)
    inputs, outputs = [], []
    for img in gt["images"]:
        ds = per_image[img["id"]]
        xyxy = np.array([d["bbox"] for d in ds], dtype=np.float32).reshape(-1, 4)
        xyxy[:, 2:] += xyxy[:, :2]
        proposals = Instances((img["height"], img["width"]))
        proposals.proposal_boxes = Boxes(torch.from_numpy(xyxy))
        proposals.objectness_logits = torch.tensor([d["score"] for d in ds])
        inputs.append({"image_id": img["id"]})
        outputs.append({"proposals": proposals})
    return inputs, outputs


def test_proposal_recall_uses_the_new_gt_api(coco_data, lvis_data, tmp_path):
    """detectron2's proposal recall runs on the faster-coco-eval gt api, with the same result."""
    from detectron2.evaluation.coco_evaluation import _evaluate_box_proposals

    expected = {}
    for name, (gt, dets) in {"coco": coco_data, "lvis": lvis_data}.items():
        gt = dict(gt, images=gt["images"][:6])  # detectron2's recall loop is slow: a few images
        inputs, outputs = _proposal_outputs(gt, dets)
        predictions = [{"image_id": i["image_id"], **o} for i, o in zip(inputs, outputs)]
        # reference: detectron2's COCO function on a pycocotools index (LVIS has no crowd)
        ref_gt = copy.deepcopy(gt)
        for ann in ref_gt["annotations"]:
            ann.setdefault("iscrowd", 0)
        ref_api = COCO()
        ref_api.dataset = ref_gt
        with contextlib.redirect_stdout(io.StringIO()):
            ref_api.createIndex()
        expected[name] = {
            f"AR{suffix}@{limit}": float(
                _evaluate_box_proposals(predictions, ref_api, area=area, limit=limit)["ar"].item()
                * 100
            )
            for limit in (100, 1000)
            for area, suffix in {"all": "", "small": "s", "medium": "m", "large": "l"}.items()
        }
        gt_file = tmp_path / f"{name}.json"
        with registered_dataset(f"eva_det_test_{name}_rpn", gt, gt_file, coco_ids=name == "coco"):
            cls = COCOEvaluator if name == "coco" else LVISEvaluator
            results = run_evaluator(
                cls(f"eva_det_test_{name}_rpn", distributed=False), inputs, outputs
            )
        assert results["box_proposals"] == pytest.approx(expected[name], abs=1e-9)
    assert expected["coco"]["AR@100"] > 10.0 and expected["lvis"]["AR@100"] > 10.0


def test_coco_test_dev_writes_results_and_skips_scoring(coco_data, tmp_path):
    gt, dets = coco_data
    test_gt = {"images": gt["images"], "categories": gt["categories"]}  # no "annotations"
    class_of = {c: i for i, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    out_dir = tmp_path / "out"
    with registered_dataset("eva_det_test_coco_dev", test_gt, tmp_path / "gt.json", coco_ids=True):
        evaluator = COCOEvaluator(
            "eva_det_test_coco_dev", distributed=False, output_dir=str(out_dir)
        )
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))
    assert results == {}
    with open(out_dir / "coco_instances_results.json") as f:
        assert json.load(f) == dets


def test_coco_no_detections_gives_nan(coco_data, tmp_path):
    gt, _ = coco_data
    with registered_dataset("eva_det_test_coco_empty", gt, tmp_path / "gt.json", coco_ids=True):
        evaluator = COCOEvaluator("eva_det_test_coco_empty", tasks=("bbox",), distributed=False)
        results = run_evaluator(evaluator, *model_io(gt, [], {}, with_masks=False))
    assert set(results["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert all(math.isnan(v) for v in results["bbox"].values())


def test_coco_rejects_unknown_backend(coco_data, tmp_path):
    gt, _ = coco_data
    with registered_dataset("eva_det_test_coco_bad", gt, tmp_path / "gt.json", coco_ids=True):
        with pytest.raises(ValueError, match="backend"):
            COCOEvaluator("eva_det_test_coco_bad", distributed=False, backend="coco_opt")


def test_atomic_write_json(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic_write_json([{"a": 1}], str(path))
    atomic_write_json([{"a": 2}], str(path))
    with open(path) as f:
        assert json.load(f) == [{"a": 2}]
    with pytest.raises(TypeError):  # not serializable: the previous file survives intact
        atomic_write_json([{"a": object()}], str(path))
    with open(path) as f:
        assert json.load(f) == [{"a": 2}]
    assert os.listdir(path.parent) == ["results.json"]


# ------------------------------------------------------------------------------------------------
# LVIS


class _NumpyWithFloat:
    """numpy, plus the ``np.float`` alias (removed in numpy 1.24) that lvis-api still uses."""

    float = float

    def __getattr__(self, name):
        return getattr(np, name)


def lvis_api_reference(gt_file, dets, iou_type, max_dets, monkeypatch):
    """LVIS-api's metrics (percent) on ``dets``; skips the calling test if lvis is missing."""
    pytest.importorskip("lvis")
    from lvis import LVIS, LVISEval, LVISResults

    monkeypatch.setattr(importlib.import_module("lvis.eval"), "np", _NumpyWithFloat())
    results = copy.deepcopy(dets)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    lvis_gt = LVIS(str(gt_file))
    lvis_eval = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=max_dets), iou_type)
    lvis_eval.run()
    ref = lvis_eval.get_results()
    return {
        k: float(ref[k] * 100) if ref[k] >= 0 else float("nan")
        for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
    }


@pytest.fixture(scope="module")
def lvis_data():
    gt = make_ground_truth(num_images=40, num_categories=9, seed=0, max_objects=10, lvis=True)
    dets = make_detections(gt, seed=1, false_positives_per_image=6)
    # the synthetic set exercises every LVIS rule
    images = {img["id"]: img for img in gt["images"]}
    present = defaultdict(set)
    for a in gt["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    neg = [d for d in dets if d["category_id"] in images[d["image_id"]]["neg_category_ids"]]
    unknown = [
        d
        for d in dets
        if d["category_id"] not in present[d["image_id"]]
        and d["category_id"] not in images[d["image_id"]]["neg_category_ids"]
    ]
    not_exh = [
        d for d in dets if d["category_id"] in images[d["image_id"]]["not_exhaustive_category_ids"]
    ]
    assert len(neg) >= 10 and len(unknown) >= 10 and len(not_exh) >= 10
    freq = {c["id"]: c["frequency"] for c in gt["categories"]}
    assert {freq[a["category_id"]] for a in gt["annotations"]} == {"r", "c", "f"}
    return gt, dets


@pytest.mark.parametrize("max_dets", [None, 8])
def test_lvis_matches_lvis_api(lvis_data, tmp_path, monkeypatch, max_dets):
    gt, dets = lvis_data
    gt_file, out_dir = tmp_path / "lvis.json", tmp_path / "out"
    per_image = defaultdict(int)
    for d in dets:
        per_image[d["image_id"]] += 1
    assert max(per_image.values()) > 8  # the per-image cap matters for max_dets=8

    class_of = {c["id"]: c["id"] - 1 for c in gt["categories"]}  # LVIS: contiguous id + 1
    with registered_dataset("eva_det_test_lvis", gt, gt_file, coco_ids=False):
        evaluator = LVISEvaluator(
            "eva_det_test_lvis",
            distributed=False,
            output_dir=str(out_dir),
            max_dets_per_image=max_dets,
        )
        assert isinstance(evaluator, D2LVISEvaluator)
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))

    with open(out_dir / "lvis_instances_results.json") as f:
        assert json.load(f) == dets
    assert set(results) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        ref = lvis_api_reference(gt_file, dets, iou_type, max_dets or 300, monkeypatch)
        assert 5.0 < ref["AP"] < 95.0
        assert_metrics_equal(results[iou_type], ref)


def _box_ann(ann_id, image_id, box, category_id=1):
    x, y, w, h = box
    polygon = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "area": w * h,
        "segmentation": polygon,
    }


def test_lvis_federated_rules_by_hand(tmp_path, monkeypatch):
    """A case small enough to score by hand; runs with the lvis package made unimportable."""
    monkeypatch.setitem(sys.modules, "lvis", None)  # ``import lvis`` now raises ImportError
    box = [10.0, 10.0, 20.0, 20.0]
    images = [
        {
            "id": i,
            "height": 64,
            "width": 64,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for i in (1, 2, 3, 4, 5)
    ]
    images[2]["neg_category_ids"] = [1]  # image 3: category 1 verified absent
    images[4]["not_exhaustive_category_ids"] = [1]  # image 5: category 1 not fully annotated
    gt = {
        "images": images,
        "annotations": [_box_ann(1, 1, box), _box_ann(2, 2, box), _box_ann(3, 5, box)],
        "categories": [
            {"id": 1, "name": "a", "frequency": "f"},
            {"id": 2, "name": "b", "frequency": "r"},
            {"id": 3, "name": "c", "frequency": "c"},
        ],
    }
    far = [40.0, 40.0, 10.0, 10.0]
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": box, "score": 0.875},  # TP
        {"image_id": 3, "category_id": 1, "bbox": box, "score": 0.75},  # FP: negative category
        {"image_id": 4, "category_id": 1, "bbox": box, "score": 0.9375},  # dropped: unknown
        {"image_id": 5, "category_id": 1, "bbox": far, "score": 0.8125},  # ignored: not exhaustive
        {"image_id": 5, "category_id": 1, "bbox": box, "score": 0.625},  # TP
        {"image_id": 1, "category_id": 2, "bbox": box, "score": 0.5},  # dropped: unknown
    ]
    # Counted in score order: TP, FP, TP over 3 gt -> precision 1 up to recall 1/3 (34 of the 101
    # recall thresholds), 2/3 up to recall 2/3 (33 more), then 0; the same at every IoU.
    expected_ap = (34 * 1.0 + 33 * 2.0 / 3.0) / 101 * 100
    class_of = {1: 0, 2: 1, 3: 2}
    with registered_dataset("eva_det_test_lvis_hand", gt, tmp_path / "gt.json", coco_ids=False):
        evaluator = LVISEvaluator("eva_det_test_lvis_hand", tasks=("bbox",), distributed=False)
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of, with_masks=False))
    bbox = results["bbox"]
    for key in ("AP", "AP50", "AP75", "APs", "APf"):
        assert bbox[key] == pytest.approx(expected_ap, abs=1e-9), key
    for key in ("APm", "APl", "APr", "APc"):  # no gt in these groups
        assert math.isnan(bbox[key]), key


def test_lvis_test_set_writes_results_and_skips_scoring(lvis_data, tmp_path):
    gt, dets = lvis_data
    test_gt = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    class_of = {c["id"]: c["id"] - 1 for c in gt["categories"]}
    out_dir = tmp_path / "out"
    with registered_dataset("eva_det_test_lvis_dev", test_gt, tmp_path / "gt.json", coco_ids=False):
        evaluator = LVISEvaluator(
            "eva_det_test_lvis_dev", distributed=False, output_dir=str(out_dir)
        )
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))
    assert results == {}
    with open(out_dir / "lvis_instances_results.json") as f:
        assert json.load(f) == dets


def test_limit_dets_per_image_is_stable_and_per_image():
    results = [
        {"image_id": 2, "score": 0.5, "k": 0},
        {"image_id": 1, "score": 0.1, "k": 1},
        {"image_id": 2, "score": 0.9, "k": 2},
        {"image_id": 1, "score": 0.7, "k": 3},
        {"image_id": 2, "score": 0.5, "k": 4},
        {"image_id": 1, "score": 0.7, "k": 5},
    ]
    kept = limit_dets_per_image(results, 2)
    assert [r["k"] for r in kept] == [2, 0, 3, 5]
    assert [r["k"] for r in limit_dets_per_image(results, 3)] == [0, 2, 4, 1, 3, 5]
    assert limit_dets_per_image(results, -1) == [results[i] for i in (0, 2, 4, 1, 3, 5)]


# ------------------------------------------------------------------------------------------------
# LVIS and COCO on the inputs where faster-coco-eval alone differs from LVIS-api


def _empty_rle(height, width):
    rle = mask_util.encode(np.zeros((height, width, 1), dtype=np.uint8, order="F"))[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _f32(x):
    return float(np.float32(x))


@pytest.fixture(scope="module")
def lvis_edge_data(lvis_data):
    """``lvis_data`` plus zero-area detections / annotations and images without ground truth."""
    gt, dets = copy.deepcopy(lvis_data)
    rng = np.random.default_rng(5)
    images = {img["id"]: img for img in gt["images"]}
    edge = []
    # empty masks on tiny boxes, top scores (what a mask head gives): zero area for segm only
    for ann in gt["annotations"][::3]:
        img = images[ann["image_id"]]
        x, y = (float(int(v)) for v in ann["bbox"][:2])
        edge.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x, y, 2.0, 2.0],
                "score": _f32(rng.uniform(0.9, 1.0)),
                "segmentation": _empty_rle(img["height"], img["width"]),
            }
        )
    # zero-width boxes with a real mask: zero area for bbox only
    for d in dets[::4]:
        edge.append(dict(d, bbox=[d["bbox"][0], d["bbox"][1], 0.0, d["bbox"][3]], score=0.96875))
    # images without ground truth: detections in unknown and in negative categories
    template = gt["images"][0]
    donor = [d for d in dets if d["image_id"] == template["id"]]
    for k in range(3):
        new_id = max(images) + 1 + k
        neg = [1 + k] if k else []
        gt["images"].append(dict(template, id=new_id, neg_category_ids=neg))
        for j, d in enumerate(donor[:6]):
            cat = neg[0] if (neg and j % 2) else int(rng.integers(1, 10))
            edge.append(dict(d, image_id=new_id, category_id=cat))
    # a ground-truth annotation of zero area (LVIS-api ignores it) with a detection on it
    ann = gt["annotations"][0]
    x, y = ann["bbox"][:2]
    zero_gt = dict(ann, id=max(a["id"] for a in gt["annotations"]) + 1, area=0.0)
    zero_gt["category_id"] = next(
        c
        for c in range(1, 10)
        if c not in images[ann["image_id"]]["neg_category_ids"]
        and all(
            a["category_id"] != c for a in gt["annotations"] if a["image_id"] == ann["image_id"]
        )
    )
    zero_gt.update(bbox=[x, y, 0.0, 4.0], segmentation=[[x, y, x, y + 4.0, x, y + 4.0]])
    gt["annotations"].append(zero_gt)
    edge.append(dict(dets[0], image_id=ann["image_id"], category_id=zero_gt["category_id"]))

    dets = dets + edge
    dets.sort(key=lambda d: d["image_id"])  # grouped by image, as the evaluator writes them
    return gt, dets


def _faster_coco_eval_alone(gt_file, dets, iou_type):
    """faster-coco-eval's lvis_style AP without eva_det's input selection (percent)."""
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    results = copy.deepcopy(dets)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    lvis_gt = FCOCO(str(gt_file))
    lvis_eval = COCOeval_faster(lvis_gt, lvis_gt.loadRes(results), iou_type, lvis_style=True)
    lvis_eval.params.maxDets = [300]
    lvis_eval.run()
    return lvis_eval.stats_as_dict["AP_all"] * 100


def test_lvis_matches_lvis_api_on_edge_inputs(lvis_edge_data, tmp_path, monkeypatch):
    gt, dets = lvis_edge_data
    gt_file = tmp_path / "lvis.json"
    with_gt = {a["image_id"] for a in gt["annotations"]}
    assert any(d["image_id"] not in with_gt for d in dets)  # images without ground truth
    class_of = {c["id"]: c["id"] - 1 for c in gt["categories"]}
    with registered_dataset("eva_det_test_lvis_edge", gt, gt_file, coco_ids=False):
        evaluator = LVISEvaluator("eva_det_test_lvis_edge", distributed=False)
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))
    for iou_type in ("bbox", "segm"):
        ref = lvis_api_reference(gt_file, dets, iou_type, 300, monkeypatch)
        assert 5.0 < ref["AP"] < 95.0
        assert_metrics_equal(results[iou_type], ref)
    # the inputs matter: faster-coco-eval alone counts the zero-area detections (bbox; its segm
    # path crashes on the images without ground truth)
    assert abs(_faster_coco_eval_alone(gt_file, dets, "bbox") - results["bbox"]["AP"]) > 0.5


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_matches_pycocotools_on_edge_inputs(lvis_edge_data, tmp_path, backend):
    """COCO keeps zero-area detections and annotations, as pycocotools."""
    gt, dets = copy.deepcopy(lvis_edge_data)
    for ann in gt["annotations"]:
        ann["iscrowd"] = 0
    gt_file = tmp_path / "coco.json"
    class_of = {c["id"]: c["id"] - 1 for c in gt["categories"]}
    with registered_dataset("eva_det_test_coco_edge", gt, gt_file, coco_ids=True):
        evaluator = COCOEvaluator("eva_det_test_coco_edge", distributed=False, backend=backend)
        results = run_evaluator(evaluator, *model_io(gt, dets, class_of))
    for iou_type in ("bbox", "segm"):
        ref = pycocotools_reference(gt_file, dets, iou_type)
        assert_metrics_equal(results[iou_type], ref)
