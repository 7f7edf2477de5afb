"""tools/test_dev_submission.py end to end on a tiny "test-dev" made of shapes images.

The reference for the packaged results is detectron2's own path: ``model(inputs)`` (paste masks
one by one), ``instances_to_coco_json`` (pycocotools per mask), the dataset's id mapping and a
stable top-k by score; the zips must hold exactly that, with masks byte-identical.
"""

import copy
import functools
import importlib.util
import json
import os
import zipfile

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from helpers.shrink import REPO, load_config
from helpers.shrink import SHAPES_CONFIG as CONFIG
from helpers.shrink import SHAPES_EVAL as TINY

from eva_det.submission import run_submission
from eva_det.submission.server import read_zip_results, validate_results

CAP = 30


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread; on a busy machine two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_tool():
    path = os.path.join(REPO, "tools", "test_dev_submission.py")
    spec = importlib.util.spec_from_file_location("eva_det_test_dev_submission_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def test_sets(mini_shapes, tmp_path_factory):
    """COCO-style and LVIS-style test sets (image info only) over the shapes_mini_val images."""
    root = tmp_path_factory.mktemp("testdev")
    val = MetadataCatalog.get("shapes_mini_val")
    with open(val.json_file) as f:
        gt = json.load(f)
    info = {"images": gt["images"], "categories": gt["categories"]}
    names = {}
    for kind, name, file in [
        ("coco", "shapes_mini_test-dev", "image_info_test-dev2017.json"),
        ("lvis", "shapes_mini_lvis_test_dev", "lvis_v1_image_info_test_dev.json"),
    ]:
        json_file = str(root / file)
        with open(json_file, "w") as f:
            json.dump(info, f)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        meta = {"thing_classes": list(val.thing_classes)}
        if kind == "coco":
            meta["thing_dataset_id_to_contiguous_id"] = dict(val.thing_dataset_id_to_contiguous_id)
        DatasetCatalog.register(name, functools.partial(load_coco_json, json_file, val.image_root))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=val.image_root, evaluator_type=kind, **meta
        )
        names[kind] = name
    return names


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = load_config(CONFIG, TINY)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


def _cfg(checkpoint, extra=()):
    return load_config(CONFIG, TINY + [f"train.init_checkpoint={checkpoint}", *extra])


@pytest.fixture(scope="module")
def reference(test_sets, checkpoint):
    """Per image, detectron2's results: model(inputs) + instances_to_coco_json (contiguous ids)."""
    cfg = _cfg(checkpoint)
    model = instantiate(cfg.model).eval()
    model.load_state_dict(torch.load(checkpoint)["model"])
    cfg.dataloader.test.dataset.names = test_sets["coco"]  # same images as the LVIS-style set
    with torch.no_grad():
        return [
            instances_to_coco_json(model(inputs)[0]["instances"], inputs[0]["image_id"])
            for inputs in instantiate(cfg.dataloader.test)
        ]


def _expected(reference, dataset, cap):
    """Reference results with the dataset's category ids, capped by a stable top-k by score."""
    mapping = MetadataCatalog.get(dataset).get("thing_dataset_id_to_contiguous_id")
    inverse = {v: k for k, v in mapping.items()} if mapping else None
    results, dropped = [], 0
    for per_image in copy.deepcopy(reference):
        per_image = sorted(per_image, key=lambda r: r["score"], reverse=True)  # stable
        dropped += max(len(per_image) - cap, 0)
        for r in per_image[:cap]:
            r["category_id"] = inverse[r["category_id"]] if inverse else r["category_id"] + 1
            results.append(r)
    return results, dropped


class _Stop(Exception):
    pass


def test_coco_submission_resumes_and_matches_detectron2(test_sets, checkpoint, reference, tmp_path):
    dataset = test_sets["coco"]
    out = str(tmp_path / "run")

    def stop_after_first(k):
        if k == 0:
            raise _Stop

    # 1) interrupted after the first of 3 shards
    with pytest.raises(_Stop):
        run_submission(
            _cfg(checkpoint), dataset, "tiny", out, max_dets_per_image=CAP, shard_size=2,
            progress=False, on_shard_written=stop_after_first,
        )  # fmt: skip
    assert sorted(os.listdir(os.path.join(out, "cache"))) == ["manifest.json", "shard_00000.json"]
    assert not os.path.exists(os.path.join(out, "bbox.zip"))

    # 2) rerun through the CLI: shard 0 comes from the cache, shards 1 and 2 are computed
    tool = _load_tool()
    argv = [
        "--config-file", os.path.join(REPO, CONFIG), "--dataset", dataset, "--alg", "tiny",
        "--output-dir", out, "--max-dets-per-image", str(CAP), "--shard-size", "2",
        *TINY, f"train.init_checkpoint={checkpoint}",
    ]  # fmt: skip
    assert tool.main(argv) == 0
    report = run_submission(
        _cfg(checkpoint), dataset, "tiny", out, max_dets_per_image=CAP, shard_size=2,
        progress=False,
    )  # fmt: skip
    assert report.shards_computed == [] and report.shards_reused == [0, 1, 2]

    # 3) the zips: one json each, server names, detectron2's results exactly
    expected, dropped = _expected(reference, dataset, CAP)
    assert dropped > 0 and report.num_dropped == dropped  # the cap was exercised
    name = "detections_test-dev2017_tiny_results.json"
    image_sizes = {im["id"]: (im["height"], im["width"]) for im in _images(dataset)}
    for task, key in [("bbox", "bbox"), ("segm", "segmentation")]:
        with zipfile.ZipFile(os.path.join(out, f"{task}.zip")) as zf:
            assert zf.namelist() == [name]
        _, results = read_zip_results(os.path.join(out, f"{task}.zip"), name)
        want = [{k: r[k] for k in ("image_id", "category_id", key, "score")} for r in expected]
        assert results == json.loads(json.dumps(want))
        validate_results(results, task, image_sizes, [1, 2, 3, 4, 5], CAP)
        assert all(isinstance(r["score"], float) for r in results)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)

    # 4) other settings in the same folder are refused, not mixed into the cache
    with pytest.raises(ValueError, match="other settings"):
        run_submission(
            _cfg(checkpoint, ["model.roi_heads.maskness_thresh=0.5"]), dataset, "tiny", out,
            max_dets_per_image=CAP, shard_size=2, progress=False,
        )  # fmt: skip


def _images(dataset):
    with open(MetadataCatalog.get(dataset).json_file) as f:
        return json.load(f)["images"]


def test_lvis_submission_writes_masks_with_lvis_ids(test_sets, checkpoint, reference, tmp_path):
    dataset = test_sets["lvis"]
    report = run_submission(_cfg(checkpoint), dataset, "tiny", str(tmp_path), progress=False)
    assert sorted(report.zips) == ["segm"]
    name, results = read_zip_results(report.zips["segm"])
    assert name == "lvis_test_dev_tiny_results.json"
    expected, dropped = _expected(reference, dataset, 300)
    assert dropped == report.num_dropped == 0
    want = [
        {k: r[k] for k in ("image_id", "category_id", "segmentation", "score")} for r in expected
    ]
    assert results == json.loads(json.dumps(want))
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4, 5}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.update(image_id=999), "not an image of the test set"),
        (lambda r: r.update(category_id=0), "not a category"),
        (lambda r: r.update(score=1), "not a finite float"),
        (lambda r: r.update(extra=1), "keys"),
        (lambda r: r["segmentation"].update(size=[1, 1]), "!= image size"),
    ],
)
def test_validate_results_names_the_problem(mutate, message):
    good = {"image_id": 1, "category_id": 2, "score": 0.5,
            "segmentation": {"size": [4, 5], "counts": "04"}}  # fmt: skip
    validate_results([dict(good)], "segm", {1: (4, 5)}, [1, 2], 1)
    bad = json.loads(json.dumps(good))
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        validate_results([bad], "segm", {1: (4, 5)}, [1, 2], 1)


def test_validate_results_enforces_the_cap():
    r = {"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0.0, 0.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="more than 1 results"):
        validate_results([r, dict(r)], "bbox", {1: (4, 5)}, [1], 1)


def test_alg_name_cannot_break_the_file_name(test_sets, checkpoint, tmp_path):
    with pytest.raises(ValueError, match="letters, digits"):
        run_submission(_cfg(checkpoint), test_sets["coco"], "my_alg", str(tmp_path))


def test_cli_keeps_overrides_after_tasks():
    args = _load_tool().parse_args(
        "--config-file c.py --dataset coco_2017_test-dev --alg eva-01 --output-dir out "
        "--tasks bbox train.init_checkpoint=m.pth model.roi_heads.use_soft_nms=True".split()
    )
    assert args.tasks == ["bbox"]
    assert args.opts == ["train.init_checkpoint=m.pth", "model.roi_heads.use_soft_nms=True"]
