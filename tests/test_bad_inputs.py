"""Bad input gives one clear message (file / key / value + fix), never a silent wrong result.

One test per kind of bad input: unreadable images (training: skipped and counted; evaluation:
error), annotations without a usable mask, unknown category ids, files that are not state dicts,
mismatched checkpoint shapes, unknown override keys, unregistered dataset names and
``$DETECTRON2_DATASETS`` pointing nowhere.
"""

import json
import logging
import os
import shutil

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser
from shrink import load_config
from tiny_cli import isolated_logging, one_thread, train_args

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.data.robust_mapper import RobustDatasetMapper
from eva_det.engine.checks import check_datasets, inspect_coco_json
from eva_det.engine.launch import main, run_cli
from eva_det.errors import InputError

SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
SIZE_128 = [
    "dataloader.train.mapper.augmentations.1.target_height=128",
    "dataloader.train.mapper.augmentations.1.target_width=128",
    "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
]


@pytest.fixture(autouse=True)
def _isolated_logging():
    with isolated_logging():  # CLI runs reconfigure loggers; later tests' caplog needs them
        yield


@pytest.fixture
def register(request):
    """register(name, json_file, image_root): a COCO-format dataset removed after the test."""
    names = []

    def _register(name, json_file, image_root):
        register_coco_instances(name, {}, str(json_file), str(image_root))
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _mini_train_copy(tmp_path):
    """A copy of shapes_mini_train (json + images) under tmp_path."""
    meta = MetadataCatalog.get("shapes_mini_train")
    DatasetCatalog.get("shapes_mini_train")  # generated on first use
    images = tmp_path / "images"
    shutil.copytree(meta.image_root, images)
    json_file = tmp_path / "instances.json"
    shutil.copy(meta.json_file, json_file)
    return json_file, images


def _args(argv):
    return default_argument_parser().parse_args(argv)


def test_unreadable_training_images_are_skipped_and_counted(
    tmp_path, mini_shapes, register, caplog
):
    json_file, images = _mini_train_copy(tmp_path)
    os.remove(images / "000002.png")  # missing
    (images / "000005.png").write_bytes(b"\x89PNG not really")  # corrupt
    name = register("eva_test_bad_images", json_file, images)
    mapper = instantiate(load_config(SHAPES, SIZE_128).dataloader.train.mapper)
    assert isinstance(mapper, RobustDatasetMapper) and mapper.skip_bad_images

    dicts = DatasetCatalog.get(name)
    loader = build_detection_train_loader(dicts, mapper=mapper, total_batch_size=4)
    with caplog.at_level(logging.WARNING, logger="eva_det"):
        batches = [batch for _, batch in zip(range(9), loader)]  # 36 samples: 3 epochs
    used = [os.path.basename(d["file_name"]) for batch in batches for d in batch]
    assert len(used) == 36 and not {"000002.png", "000005.png"} & set(used)
    skips = [r.getMessage() for r in caplog.records if "Skipping unreadable" in r.getMessage()]
    assert any("000002.png" in m and "FileNotFoundError" in m for m in skips)
    assert any("000005.png" in m for m in skips)
    assert "2 unreadable image(s) skipped so far" in skips[-1]

    strict = RobustDatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", max_bad_images=1
    )
    bad = [d for d in dicts if d["file_name"].endswith(("000002.png", "000005.png"))]
    assert strict(bad[0]) is None
    with pytest.raises(InputError, match="max_bad_images=1"):
        strict(bad[1])
    # an error that is not about reading the image is not swallowed
    wrong_size = {**dicts[0], "height": 64}
    with pytest.raises(ValueError, match="Mismatched image shape"):
        strict(wrong_size)


def test_unreadable_image_in_evaluation_names_the_file(tmp_path, mini_shapes, register):
    json_file, images = _mini_train_copy(tmp_path)
    os.remove(images / "000003.png")
    name = register("eva_test_bad_eval_images", json_file, images)
    cfg = load_config(SHAPES, SIZE_128 + [f"dataloader.test.dataset.names={name}"])
    loader = build_detection_test_loader(
        DatasetCatalog.get(name), mapper=instantiate(cfg.dataloader.test.mapper)
    )
    with pytest.raises(InputError, match=r"000003.png \(image id 3\).*Evaluation needs every"):
        list(loader)


def test_annotations_without_usable_mask_are_dropped_with_ids(
    tmp_path, mini_shapes, register, caplog
):
    _, images = _mini_train_copy(tmp_path)
    triangle = [[10.0, 10.0, 60.0, 10.0, 30.0, 50.0]]
    anns = [
        dict(id=11, segmentation=triangle, bbox=[10, 10, 50, 40]),
        dict(id=12, segmentation=[[10.0, 10.0, 20.0, 20.0, 30.0, 30.0]], bbox=[10, 10, 20, 20]),
        dict(id=13, segmentation=[], bbox=[70, 70, 20, 20]),
        dict(id=14, segmentation=[[1.0, 2.0, 3.0, 4.0]], bbox=[1, 2, 2, 2]),
    ]
    coco = {
        "images": [dict(id=1, file_name="000001.png", height=128, width=128)],
        "annotations": [dict(a, image_id=1, category_id=1, iscrowd=0, area=1.0) for a in anns],
        "categories": [dict(id=1, name="circle")],
    }
    json_file = tmp_path / "polygons.json"
    json_file.write_text(json.dumps(coco))
    name = register("eva_test_bad_polygons", json_file, images)
    record = DatasetCatalog.get(name)[0]  # detectron2 dropped id 14 (2 points) when loading
    assert len(record["annotations"]) == 3
    args = dict(augmentations=[], image_format="RGB", use_instance_mask=True)
    with pytest.raises(KeyError, match="segmentation"):  # what detectron2's mapper does
        DatasetMapper(True, **args)(record)

    with caplog.at_level(logging.WARNING, logger="eva_det"):
        out = RobustDatasetMapper(True, **args)(record)
    assert len(out["instances"]) == 1
    drops = [r.getMessage() for r in caplog.records if "Dropping annotation" in r.getMessage()]
    assert len(drops) == 2
    assert "#1 " in drops[0] and "image id 1" in drops[0] and "zero area" in drops[0]
    assert "#2 " in drops[1] and "image id 1" in drops[1] and "no segmentation" in drops[1]
    # the json check names all of them by annotation id, including the one detectron2 dropped
    assert [(i, a) for i, a, _ in inspect_coco_json(str(json_file)).bad_polygons] == [
        (1, 12),
        (1, 13),
        (1, 14),
    ]


def test_unknown_category_ids_name_ids_and_file(
    tmp_path, repo_root, mini_shapes, register, monkeypatch
):
    monkeypatch.chdir(repo_root)
    json_file, images = _mini_train_copy(tmp_path)
    coco = json.loads(json_file.read_text())
    coco["annotations"][0]["category_id"] = 42
    coco["annotations"][3]["category_id"] = 77
    coco["annotations"][4]["category_id"] = 77
    json_file.write_text(json.dumps(coco))
    name = register("eva_test_unknown_cats", json_file, images)
    argv = train_args(tmp_path / "out", [f"dataloader.train.dataset.names={name}"])
    with pytest.raises(InputError) as info, one_thread():
        main(_args(argv))
    message = str(info.value)
    assert str(json_file) in message and "[42, 77]" in message and "[1, 2]" in message


class _Toy(torch.nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.fc = torch.nn.Linear(2, out)


@pytest.mark.parametrize(
    "content, expected",
    [
        ([torch.zeros(3)], "holds a list, not a dict"),
        (torch.zeros(3), "holds a Tensor, not a dict"),
        ({"model": [1, 2]}, "'model' entry is a list"),
        ({"state_dict": {"fc.weight": torch.zeros(3, 2)}}, "not a state dict.*'state_dict'"),
        (
            torch.nn.Linear(2, 3),
            "pickles Python objects .*not load safely: torch.nn.modules.linear.Linear",
        ),
        ("truncated", "Cannot read checkpoint .*truncated"),
    ],
)
def test_checkpoint_that_is_not_a_state_dict(tmp_path, content, expected):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save({"model": _Toy().state_dict()}, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 40)
    else:
        torch.save(content, path)
    with pytest.raises(InputError, match=expected) as info:
        EVACheckpointer(_Toy()).load(str(path))
    assert str(path) in str(info.value)


def test_checkpoint_with_mismatched_shapes_is_reported(tmp_path, caplog):
    path = tmp_path / "other_head.pth"
    torch.save({"model": _Toy(out=4).state_dict()}, path)
    model = _Toy()
    before = model.fc.weight.detach().clone()
    checkpointer = EVACheckpointer(model)
    checkpointer.load(str(path))
    report = checkpointer.last_load_report
    assert report.incorrect_shapes == [("fc.weight", (4, 2), (3, 2)), ("fc.bias", (4,), (3,))]
    assert "skipped 2 with other shapes (fc.weight (4, 2) vs (3, 2)" in report.summary()
    assert torch.equal(model.fc.weight, before)  # not loaded


def test_bad_checkpoint_through_the_cli_exits_with_one_message(
    tmp_path, repo_root, mini_shapes, monkeypatch, caplog
):
    monkeypatch.chdir(repo_root)
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    argv = ["--eval-only"] + train_args(tmp_path, [f"train.init_checkpoint={path}"])
    with caplog.at_level(logging.ERROR, logger="eva_det"), one_thread():
        with pytest.raises(SystemExit) as info:
            run_cli(argv)
    assert info.value.code == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"Checkpoint {path} holds a list" in errors[0].getMessage()


def test_unknown_override_key_names_close_matches(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    argv = ["--config-file", SHAPES, "train.max_iters=3", "model.roi_heads.use_soft_nmss=True"]
    with pytest.raises(InputError) as info:
        main(_args(argv))
    message = str(info.value)
    assert (
        "train.max_iters: train.max_iters does not exist. Did you mean train.max_iter?" in message
    )
    assert "Did you mean model.roi_heads.use_soft_nms" in message
    # a constructor argument the config leaves at its default is a valid key
    cfg = load_config(SHAPES, ["model.roi_heads.maskness_thresh=0.5", "+my.new_key=1"])
    assert cfg.model.roi_heads.maskness_thresh == 0.5 and cfg.my.new_key == 1
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 2


def test_unregistered_dataset_lists_close_names(repo_root, mini_shapes, monkeypatch):
    monkeypatch.chdir(repo_root)
    argv = [
        "--eval-only",
        "--config-file",
        SHAPES,
        "dataloader.test.dataset.names=shapes_mini_vall",
    ]
    with pytest.raises(InputError) as info:
        main(_args(argv))
    message = str(info.value)
    assert "dataloader.test.dataset.names: dataset 'shapes_mini_vall' is not registered" in message
    assert "shapes_mini_val" in message.split("Close registered names:")[1]


def test_detectron2_datasets_pointing_nowhere(tmp_path, register, monkeypatch):
    missing_root = tmp_path / "no_such_folder"
    json_file = missing_root / "coco" / "annotations" / "instances_val2017.json"
    name = register("eva_test_missing_root", json_file, missing_root / "coco" / "val2017")
    cfg = load_config(SHAPES, [f"dataloader.test.dataset.names={name}"])
    monkeypatch.setenv("DETECTRON2_DATASETS", str(missing_root))
    with pytest.raises(InputError) as info:
        check_datasets(cfg, eval_only=True)
    message = str(info.value)
    assert f"DETECTRON2_DATASETS={missing_root} does not exist" in message
    assert str(json_file) in message and "datasets/README.md" in message

    # the folder exists, the dataset in it does not
    missing_root.mkdir()
    with pytest.raises(InputError, match=f"its json_file {json_file} does not exist"):
        check_datasets(cfg, eval_only=True)
    monkeypatch.delenv("DETECTRON2_DATASETS")
    with pytest.raises(InputError, match="DETECTRON2_DATASETS is not set"):
        check_datasets(cfg, eval_only=True)
