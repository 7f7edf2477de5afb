"""Acceptance: the official EVA-01 evaluation command lines run verbatim through eva_det's CLI.

The COCO and LVIS commands of REFERENCE.md section 1 are passed unchanged (only the checkpoint
path is a temporary tiny one) to ``eva_det.engine.launch`` (``main`` with detectron2's argument
parser, and ``run_cli`` itself), followed by overrides that shrink the model and point the test
set at the ``mini_shapes`` images. They must produce AP tables; the COCO table is checked against
plain pycocotools on the results file the run wrote.

The LVIS run keeps the real 1203-class LVIS model: its test set is an LVIS-format json holding
all 1203 LVIS v1 categories (ids, names and r/c/f frequencies of detectron2's list), with the
shapes annotated under five of them (one rare, two common, two frequent) plus per-image
``neg_category_ids`` and ``not_exhaustive_category_ids``.
"""

import contextlib
import io
import json
import math
import os
from collections import Counter

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES
from detectron2.engine import default_argument_parser
from helpers.shrink import EVA01_SHRINK, REPO, load_config
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eva_det.engine.launch import main, run_cli
from eva_det.evaluation import evaluate_predictions_on_lvis

COCO_CONFIG = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py"
LVIS_CONFIG = "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva_1536.py"
# REFERENCE.md section 1, verbatim except the checkpoint path ({ckpt})
COCO_COMMAND = (
    f"--eval-only --config-file {COCO_CONFIG} train.init_checkpoint={{ckpt}} "
    "model.roi_heads.use_soft_nms=True model.roi_heads.method=linear "
    "model.roi_heads.iou_threshold=0.6 model.roi_heads.override_score_thresh=0.0"
)
COCO_MASK_COMMAND = COCO_COMMAND + " model.roi_heads.maskness_thresh=0.5"
LVIS_COMMAND = (
    f"--eval-only --config-file {LVIS_CONFIG} train.init_checkpoint={{ckpt}} "
    "dataloader.evaluator.max_dets_per_image=1000 model.roi_heads.maskness_thresh=0.5"
)
# CPU-sized model and data; heads narrowed (LVIS keeps 1000 detections per image)
TINY = EVA01_SHRINK + [
    # as in the _1536 recipes, pad beyond img_size: global rel-pos tables are resized ("beit")
    "model.backbone.square_pad=160",
    "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.proposal_generator.post_nms_topk=[1000,20]",
    "model.roi_heads.mask_head.conv_dims=[16]",
    *[f"model.roi_heads.box_heads.{i}.conv_dims=[16]" for i in range(3)],
]
COCO_TINY = TINY + [
    "dataloader.test.dataset.names=shapes_mini_val",
    "model.roi_heads.num_classes=5",
]
# one mask channel instead of 1203 (1000 x 1203 x 28 x 28 floats would be 3.8 GB per image)
LVIS_TINY = TINY + [
    "dataloader.test.dataset.names=shapes_mini_lvis_val",
    "model.roi_heads.mask_head.num_classes=1",
]
# shapes category id -> LVIS v1 category id: frequencies r, c, c, f, f
LVIS_IDS = {1: 13, 2: 1, 3: 5, 4: 2, 5: 3}
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = COCO_METRICS + ("APr", "APc", "APf")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread; on a busy machine two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the official commands use config paths relative to the repo


def _checkpoint(path, config, overrides):
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    torch.save({"model": instantiate(cfg.model).state_dict()}, path)
    return str(path)


def _args(command, ckpt, overrides):
    argv = command.format(ckpt=ckpt).split() + overrides
    return default_argument_parser().parse_args(argv)


def _assert_table(table, metrics):
    for task in ("bbox", "segm"):
        assert set(metrics) <= set(table[task]), table[task].keys()
        for name, value in table[task].items():
            assert isinstance(value, float), (task, name, value)
        for name in ("AP", "AP50", "AP75"):
            assert 0.0 <= table[task][name] <= 100.0


def _pycocotools_ap(json_file, results, iou_type):
    results = [dict(r) for r in results]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0] * 100


@pytest.mark.slow  # the official evaluation commands end to end
def test_official_coco_commands(mini_shapes, in_repo, tmp_path):
    ckpt = _checkpoint(tmp_path / "tiny_coco.pth", COCO_CONFIG, COCO_TINY)
    out_box, out_mask = tmp_path / "box", tmp_path / "mask"
    box_overrides = COCO_TINY + [f"train.output_dir={out_box}",
                                 f"dataloader.evaluator.output_dir={out_box}"]  # fmt: skip
    table = main(_args(COCO_COMMAND, ckpt, box_overrides))
    _assert_table(table, COCO_METRICS + tuple(f"AP-{c}" for c in ("circle", "star")))
    with open(out_box / "coco_instances_results.json") as f:
        results = json.load(f)
    json_file = MetadataCatalog.get("shapes_mini_val").json_file
    for task in ("bbox", "segm"):
        assert table[task]["AP"] == pytest.approx(_pycocotools_ap(json_file, results, task))
    per_image = Counter(r["image_id"] for r in results)
    assert len(per_image) == 6 and max(per_image.values()) > 20  # score threshold 0 kept many

    # the mask-AP command, through the CLI entry point itself
    mask_overrides = COCO_TINY + [f"train.output_dir={out_mask}",
                                  f"dataloader.evaluator.output_dir={out_mask}"]  # fmt: skip
    run_cli(COCO_MASK_COMMAND.format(ckpt=ckpt).split() + mask_overrides)
    with open(out_mask / "coco_instances_results.json") as f:
        rescored = json.load(f)
    # maskness only rescales the scores of the same detections, by factors in [0, 1]
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in rescored] == [
        (r["image_id"], r["category_id"], r["bbox"]) for r in results
    ]
    pairs = [(a["score"], b["score"]) for a, b in zip(rescored, results)]
    assert all(a <= b * (1 + 1e-6) for a, b in pairs) and any(a < b * 0.99 for a, b in pairs)


@pytest.fixture
def mini_lvis(mini_shapes, tmp_path):
    """``shapes_mini_lvis_val``: the shapes_mini_val images and masks in LVIS v1 format."""
    with open(MetadataCatalog.get("shapes_mini_val").json_file) as f:
        coco = json.load(f)
    categories = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    present = {}
    annotations = []
    for ann in coco["annotations"]:
        lvis_id = LVIS_IDS[ann["category_id"]]
        present.setdefault(ann["image_id"], set()).add(lvis_id)
        ann = {k: ann[k] for k in ("id", "image_id", "bbox", "area", "segmentation")}
        annotations.append(dict(ann, category_id=lvis_id))
    images = []
    for k, img in enumerate(coco["images"]):
        cats = sorted(present.get(img["id"], ()))
        absent = [c for c in LVIS_IDS.values() if c not in cats]
        images.append(dict(img, neg_category_ids=absent[:2] + [100 + k],
                           not_exhaustive_category_ids=cats[:1] if k % 2 else []))  # fmt: skip
    json_file = str(tmp_path / "lvis_v1_mini_val.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    image_root = MetadataCatalog.get("shapes_mini_val").image_root
    dicts = [dict(file_name=os.path.join(image_root, im["file_name"]), height=im["height"],
                  width=im["width"], image_id=im["id"]) for im in images]  # fmt: skip
    name = "shapes_mini_lvis_val"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="lvis",
        thing_classes=[c["name"] for c in categories],
    )  # fmt: skip
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.slow  # the official evaluation commands end to end
def test_official_lvis_command(mini_lvis, in_repo, tmp_path):
    ckpt = _checkpoint(tmp_path / "tiny_lvis.pth", LVIS_CONFIG, LVIS_TINY)
    out = tmp_path / "lvis"
    overrides = LVIS_TINY + [f"train.output_dir={out}", f"dataloader.evaluator.output_dir={out}"]
    table = main(_args(LVIS_COMMAND, ckpt, overrides))
    assert set(table) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(table[task]) == set(LVIS_METRICS)
        assert all(isinstance(v, float) for v in table[task].values())
        assert 0.0 <= table[task]["AP"] <= 100.0 and not math.isnan(table[task]["APf"])
    with open(out / "lvis_instances_results.json") as f:
        results = json.load(f)
    # the official 1000 detections per image (more than LVIS's default 300) reach the evaluator
    assert max(Counter(r["image_id"] for r in results).values()) == 1000
    assert {r["category_id"] for r in results} <= set(range(1, 1204))
    json_file = MetadataCatalog.get(mini_lvis).json_file
    for task in ("bbox", "segm"):
        again = evaluate_predictions_on_lvis(json_file_api(json_file), results, task, 1000)
        assert again["AP"] == pytest.approx(table[task]["AP"], nan_ok=True)


def json_file_api(json_file):
    from faster_coco_eval import COCO as FasterCOCO

    return FasterCOCO(json_file)
