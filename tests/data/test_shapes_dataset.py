"""Tests of the synthetic shapes dataset: determinism, annotation validity, registration, I/O."""

import json
import os
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image

from eva_det.data.datasets.shapes import (
    SHAPES_CLASSES,
    SHAPES_NUM_TRAIN,
    SHAPES_NUM_VAL,
    ensure_shapes,
    generate_shapes,
    register_shapes,
    render_shapes_image,
)

SIZE = 96
SEED = 7


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _pixels(root, split, file_name):
    return np.asarray(Image.open(os.path.join(root, split, file_name)).convert("RGB"))


@pytest.fixture(scope="module")
def val8(tmp_path_factory):
    """A small generated split shared by the read-only tests: (root, coco dict)."""
    root = str(tmp_path_factory.mktemp("shapes"))
    json_path = generate_shapes(root, "val", 8, image_size=SIZE, seed=SEED)
    with open(json_path) as f:
        return root, json.load(f)


@pytest.fixture
def temp_names():
    """Unique dataset names, removed from detectron2's catalogs afterwards."""
    names = []

    def make(split):
        names.append(f"shapes_test_{split}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_generation_is_deterministic(tmp_path, val8):
    root_a, coco_a = val8
    root_b = str(tmp_path / "b")
    json_b = generate_shapes(root_b, "val", 8, image_size=SIZE, seed=SEED)
    assert _read(os.path.join(root_a, "annotations", "instances_val.json")) == _read(json_b)
    for img in coco_a["images"]:
        assert _read(os.path.join(root_a, "val", img["file_name"])) == _read(
            os.path.join(root_b, "val", img["file_name"])
        )
    # the seed and the split matter
    other_seed = render_shapes_image(SEED + 1, "val", 0, SIZE).image
    other_split = render_shapes_image(SEED, "train", 0, SIZE).image
    first = _pixels(root_a, "val", coco_a["images"][0]["file_name"])
    assert not np.array_equal(first, other_seed)
    assert not np.array_equal(first, other_split)


def test_annotations_match_independent_reference(val8):
    root, coco = val8
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPES_CLASSES) + 1))
    assert [c["name"] for c in coco["categories"]] == list(SHAPES_CLASSES)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    anns_by_image = {}
    for ann in coco["annotations"]:
        anns_by_image.setdefault(ann["image_id"], []).append(ann)
    occluded = 0
    for index, img in enumerate(coco["images"]):
        assert img["id"] == index + 1 and img["file_name"] == f"{index + 1:06d}.png"
        assert (img["height"], img["width"]) == (SIZE, SIZE)
        pixels = _pixels(root, "val", img["file_name"])
        rendered = render_shapes_image(SEED, "val", index, SIZE)
        assert np.array_equal(pixels, rendered.image)
        anns = anns_by_image[img["id"]]
        full = rendered.full_masks
        assert len(anns) == len(full) >= 1
        # independent reference: a shape's visible part is what no later shape covers
        union_later = np.zeros((SIZE, SIZE), dtype=bool)
        expected = []
        for mask in full[::-1]:
            expected.append(mask & ~union_later)
            union_later |= mask
        expected = expected[::-1]
        decoded = []
        for ann, exp, f in zip(anns, expected, full):
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= len(SHAPES_CLASSES)
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            assert np.array_equal(mask, exp)
            assert ann["area"] == int(mask.sum()) == int(mask_util.area(ann["segmentation"]))
            assert mask.sum() >= 0.3 * f.sum()
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= x and 0 <= y and x + w <= SIZE and y + h <= SIZE
            occluded += int(mask.sum() < f.sum())
            decoded.append(mask)
        # instances never share pixels (the occluder owns the overlap)
        assert int(np.sum(decoded, axis=0).max()) == 1
        # the background is textured, not a flat colour
        background = pixels[~np.any(decoded, axis=0)]
        assert len(np.unique(background, axis=0)) > 50
    assert occluded > 0, "no instance in the sample is partially occluded"
    used = {a["category_id"] for a in coco["annotations"]}
    assert used == set(range(1, len(SHAPES_CLASSES) + 1))


def test_registration_is_lazy_and_round_trips(tmp_path, temp_names):
    root = str(tmp_path / "shapes")
    name = temp_names("val")
    assert register_shapes(root, {name: ("val", 5)}, image_size=64, seed=SEED) == [name]
    assert not os.path.exists(root), "registration must not touch the disk"
    assert register_shapes(root, {name: ("val", 5)}, image_size=64, seed=SEED) == []
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 5
    with open(os.path.join(root, "annotations", "instances_val.json")) as f:
        coco = json.load(f)
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"])
    for d in dicts:
        assert os.path.isfile(d["file_name"]) and (d["height"], d["width"]) == (64, 64)
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(SHAPES_CLASSES)
            assert isinstance(ann["segmentation"]["counts"], str)
    # detectron2's training mapper reads the RLE masks as bitmasks
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="RGB",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    mapped = mapper(dicts[0])
    assert tuple(mapped["image"].shape) == (3, 64, 64)
    areas = [a["area"] for a in coco["annotations"] if a["image_id"] == dicts[0]["image_id"]]
    assert mapped["instances"].gt_masks.tensor.sum(dim=(1, 2)).tolist() == areas
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == list(SHAPES_CLASSES) and meta.evaluator_type == "coco"
    assert meta.image_root == os.path.join(root, "val")


def test_default_registration_at_import():
    import eva_det.data  # noqa: F401  (registers the default names)

    for name, num in (("shapes_train", SHAPES_NUM_TRAIN), ("shapes_val", SHAPES_NUM_VAL)):
        assert name in DatasetCatalog.list()
        params = MetadataCatalog.get(name).shapes_params
        assert params["num_images"] == num and params["image_size"] == 256


def test_leftovers_of_interrupted_run_are_replaced(tmp_path):
    root = tmp_path / "shapes"
    (root / ".tmp-val-abc123" / "val").mkdir(parents=True)
    (root / ".tmp-val-abc123" / "val" / "000001.png").write_bytes(b"partial")
    (root / "val").mkdir()
    (root / "val" / "000001.png").write_bytes(b"partial")
    json_path = generate_shapes(str(root), "val", 3, image_size=64, seed=SEED)
    assert sorted(os.listdir(root / "val")) == ["000001.png", "000002.png", "000003.png"]
    assert _pixels(str(root), "val", "000001.png").shape == (64, 64, 3)
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]
    # a complete split is left alone; a request with other parameters is refused
    mtime = os.stat(json_path).st_mtime_ns
    assert generate_shapes(str(root), "val", 3, image_size=64, seed=SEED) == json_path
    assert os.stat(json_path).st_mtime_ns == mtime
    with pytest.raises(ValueError, match="instances_val.json"):
        generate_shapes(str(root), "val", 4, image_size=64, seed=SEED)


def test_foreign_files_are_never_deleted(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        generate_shapes(str(tmp_path), "val", 2, image_size=64)
    assert (tmp_path / "val" / "notes.txt").read_text() == "mine"


def test_coco_evaluator_scores_ground_truth_as_perfect(tmp_path, temp_names):
    root = str(tmp_path / "shapes")
    name = temp_names("val")
    register_shapes(root, {name: ("val", 4)}, image_size=64, seed=SEED)
    json_path = ensure_shapes(name)
    # constructed before DatasetCatalog.get(name) ever ran
    evaluator = COCOEvaluator(name, distributed=False)
    evaluator.reset()
    with open(json_path) as f:
        coco = json.load(f)
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns])
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(bool)
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(boxes)
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] - 1 for a in anns])
        inst.pred_masks = torch.from_numpy(masks)
        evaluator.process([{"image_id": img["id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_unknown_dataset_names_are_rejected():
    with pytest.raises(KeyError, match="no_such_shapes"):
        ensure_shapes("no_such_shapes")
    with pytest.raises(ValueError, match="split="):
        generate_shapes("unused", "../val", 1)
