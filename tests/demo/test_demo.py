"""tools/demo.py end to end on a shrunk random-weight model: images (folder), a video, options."""

import importlib.util
import json
import logging
import os
import re

import cv2
import numpy as np
import pytest
import torch
from helpers.shrink import EVA01_SHRINK, REPO, load_config

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.demo import LazyPredictor, expand_inputs, filter_instances
from eva_det.demo.predictor import set_score_threshold
from eva_det.errors import InputError

CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
OVERRIDES = EVA01_SHRINK + [
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    # random weights score ~1 / (classes + 1): keep every box, the threshold picks a few
    "model.roi_heads.override_score_thresh=0.0",
    "train.device=cpu",
]


def _demo_tool():
    """tools/demo.py as a module (site-packages also has a top-level `tools` package)."""
    spec = importlib.util.spec_from_file_location(
        "eva_demo_tool", os.path.join(REPO, "tools/demo.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene(height: int, width: int, seed: int) -> np.ndarray:
    """A BGR image of flat rectangles on a dark background (compresses cleanly in videos)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 40, np.uint8)
    for _ in range(4):
        x, y = int(rng.integers(0, width - 30)), int(rng.integers(0, height - 30))
        side = int(rng.integers(15, 40))
        color = tuple(int(c) for c in rng.integers(80, 255, 3))
        cv2.rectangle(image, (x, y), (x + side, y + side), color, -1)
    return image


def _near_boxes(boxes: np.ndarray, shape, margin: int) -> np.ndarray:
    """(H, W) bool: pixels inside any box grown by ``margin``."""
    inside = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in boxes:
        inside[
            max(int(y0) - margin, 0) : int(np.ceil(y1)) + margin + 1,
            max(int(x0) - margin, 0) : int(np.ceil(x1)) + margin + 1,
        ] = True
    return inside


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    """Inputs (2 images in a folder tree, a 3-frame video), a checkpoint and a predictor."""
    root = tmp_path_factory.mktemp("demo")
    os.makedirs(root / "in" / "sub")
    cv2.imwrite(str(root / "in" / "a.png"), _scene(96, 128, 1))
    cv2.imwrite(str(root / "in" / "sub" / "b.png"), _scene(128, 160, 2))  # resized by the mapper
    video = str(root / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5, (128, 112))
    for _ in range(3):
        writer.write(_scene(112, 128, 3))
    writer.release()

    torch.manual_seed(0)
    predictor = LazyPredictor(load_config(CONFIG, OVERRIDES), load_weights=False)
    EVACheckpointer(predictor.detector, str(root)).save("weights")
    return root, predictor


def _threshold_for(predictor, image_bgr: np.ndarray, keep: int = 3) -> float:
    scores = predictor(image_bgr)["instances"].scores.sort(descending=True).values
    assert len(scores) >= keep
    return float(scores[keep - 1])


def test_demo_writes_images_and_video(demo_setup):
    root, predictor = demo_setup
    image_b = cv2.imread(str(root / "in" / "sub" / "b.png"))
    threshold = _threshold_for(predictor, image_b)
    out = root / "out"
    written = _demo_tool().main(
        [
            "--config-file",
            os.path.join(REPO, CONFIG),
            "--input",
            str(root / "in"),
            str(root / "*.avi"),
            "--output",
            str(out),
            "--weights",
            str(root / "weights.pth"),
            "--confidence-threshold",
            str(threshold),
        ]
        + OVERRIDES
    )
    assert sorted(written) == sorted(
        [str(out / "a.png"), str(out / "sub" / "b.png"), str(out / "clip.mp4")]
    )

    # images: same size as the inputs, drawn where the reference predictions are
    for name in ("a.png", os.path.join("sub", "b.png")):
        src, dst = cv2.imread(str(root / "in" / name)), cv2.imread(str(out / name))
        assert dst.shape == src.shape
        assert not np.array_equal(dst, src)
    instances = filter_instances(predictor(image_b)["instances"], threshold)
    assert len(instances) >= 3
    boxes = instances.pred_boxes.tensor.numpy()  # original-image coordinates (160 x 128)
    changed = np.abs(cv2.imread(str(out / "sub" / "b.png")).astype(int) - image_b).sum(-1) > 0
    near = _near_boxes(boxes, image_b.shape, margin=2)
    # every box outline is drawn: its edge pixels change
    x0, y0, x1, y1 = boxes[0]
    edge = _near_boxes([[x0, y0, x1, y1]], image_b.shape, 1) & ~_near_boxes(
        [[x0 + 2, y0 + 2, x1 - 2, y1 - 2]], image_b.shape, 0
    )
    assert changed[edge].mean() > 0.9
    # the drawing is at the boxes (labels can sit just outside them)
    assert changed[near].mean() > 5 * max(changed[~near].mean(), 1e-3)

    # video: 3 frames of the input size, drawn (masks) where the predictions are
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 3
    assert all(f.shape == (112, 128, 3) for f in frames)
    ok, source = cv2.VideoCapture(str(root / "clip.avi")).read()
    assert ok
    boxes = filter_instances(predictor(source)["instances"], threshold).pred_boxes.tensor.numpy()
    assert len(boxes) >= 1
    diff = np.abs(frames[0].astype(int) - source.astype(int)).sum(-1)
    near = _near_boxes(boxes, source.shape, margin=2)
    assert diff[near].mean() > 2 * diff[~near].mean() + 1


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/x.jpg", "d/e/y.PNG", "d/notes.txt", "v.mp4", "w.MOV", "x.jpg", "z.gif"):
        (tmp_path / name).write_bytes(b"")
    out = str(tmp_path / "o")
    # a file given twice (here: by the folder and by name) is processed once
    items = expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "[vw].*"), str(tmp_path / "d/x.jpg")], out
    )
    assert [
        (os.path.relpath(i.path, tmp_path), os.path.relpath(i.output, out), i.is_video)
        for i in items
    ] == [
        ("d/e/y.PNG", "e/y.PNG", False),
        ("d/x.jpg", "x.jpg", False),
        ("v.mp4", "v.mp4", True),
        ("w.MOV", "w.mp4", True),
    ]
    with pytest.raises(InputError, match="nothing"):
        expand_inputs([str(tmp_path / "nothing*.jpg")], out)
    with pytest.raises(ValueError, match="unknown file type"):
        expand_inputs([str(tmp_path / "z.gif")], out)
    with pytest.raises(ValueError, match="both be written"):
        expand_inputs([str(tmp_path / "x.jpg"), str(tmp_path / "d")], out)


def test_parse_args_overrides():
    args, overrides = _demo_tool().parse_args(
        [
            "--config-file",
            "c.py",
            "--input",
            "a.jpg",
            "b/",
            "train.device=cpu",
            "--output",
            "o",
            "--weights",
            "w.pth",
            "--opts",
            "x.y=1",
        ]
    )
    assert args.input == ["a.jpg", "b/"]
    assert overrides == ["train.device=cpu", "x.y=1", "train.init_checkpoint=w.pth"]


def test_set_score_threshold():
    cfg = load_config(CONFIG)
    set_score_threshold(cfg, 0.3)
    assert cfg.model.roi_heads.override_score_thresh == 0.3
    cfg = load_config(CONFIG, ["model.roi_heads.override_score_thresh=0.0"])
    set_score_threshold(cfg, 0.3)  # an explicit evaluation setting is kept
    assert cfg.model.roi_heads.override_score_thresh == 0.0


def test_predictor_runs_tta_from_the_config(demo_setup):
    """test.aug.enabled wraps the model for TTA (in eval mode); outputs are in input coordinates."""
    root, _ = demo_setup
    cfg = load_config(CONFIG, OVERRIDES + ["test.aug.enabled=True", "test.aug.min_sizes=[96,128]"])
    cfg.train.init_checkpoint = str(root / "weights.pth")
    predictor = LazyPredictor(cfg)
    assert predictor.model is not predictor.detector and not predictor.model.training
    instances = predictor(cv2.imread(str(root / "in" / "sub" / "b.png")))["instances"]
    assert instances.image_size == (128, 160) and len(instances) > 0
    boxes = instances.pred_boxes.tensor
    assert boxes[:, 2].max() <= 160 and boxes[:, 3].max() <= 128


_CUSTOM_CONFIG = """
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from eva_det.config.paths import get_config

_base = get_config("projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py")
dataloader, lr_multiplier, model = _base.dataloader, _base.lr_multiplier, _base.model
optimizer, test, train = _base.optimizer, _base.test, _base.train
if "eva_test_demo_custom" not in DatasetCatalog.list():
    register_coco_instances("eva_test_demo_custom", {{}}, {json_file!r}, {image_root!r})
dataloader.test.dataset.names = "eva_test_demo_custom"
"""
FRUITS = ["apple", "banana", "cherry", "damson", "elderberry"]


def test_demo_labels_a_custom_coco_dataset_with_its_class_names(demo_setup, caplog):
    """A dataset registered with register_coco_instances (no thing_classes until loaded)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root, predictor = demo_setup
    custom = root / "custom"
    custom.mkdir(exist_ok=True)
    categories = [{"id": 11 + i, "name": n} for i, n in enumerate(FRUITS)]
    images = [{"id": 1, "file_name": "a.png", "height": 96, "width": 128}]
    (custom / "instances.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": categories})
    )
    config = custom / "custom_dataset_config.py"
    config.write_text(
        _CUSTOM_CONFIG.format(json_file=str(custom / "instances.json"), image_root=str(root / "in"))
    )
    image = root / "in" / "a.png"
    threshold = _threshold_for(predictor, cv2.imread(str(image)))
    try:
        with caplog.at_level(logging.INFO, logger="eva_det"):
            _demo_tool().main(
                ["--config-file", str(config), "--input", str(image), "--output"]
                + [str(custom / "out"), "--weights", str(root / "weights.pth")]
                + ["--confidence-threshold", str(threshold)]
                + OVERRIDES
            )
        assert MetadataCatalog.get("eva_test_demo_custom").thing_classes == FRUITS
    finally:
        DatasetCatalog.remove("eva_test_demo_custom")
        MetadataCatalog.remove("eva_test_demo_custom")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(image))]
    assert len(lines) == 1, lines
    labels = re.search(r"detections \((.*)\) ->", lines[0]).group(1).split(", ")
    assert len(labels) >= 3
    for label in labels:  # "class score%" with the dataset's names, never a bare class id
        name, score = label.rsplit(" ", 1)
        assert name in FRUITS and re.fullmatch(r"\d+%", score), label
    assert os.path.isfile(custom / "out" / "a.png")
