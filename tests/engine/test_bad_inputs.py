"""Bad input gives one clear message (file / key / value + fix), never a silent wrong result.

One test per kind of bad input: unreadable images (training: skipped and counted; evaluation:
error), annotations without a usable mask, unknown category ids, files that are not state dicts,
mismatched checkpoint shapes, unknown override keys, unregistered dataset names and
``$DETECTRON2_DATASETS`` pointing nowhere. Then every tool's command-line behaviour (one ERROR
message, exit status 2, no traceback): overrides of the wrong type, config syntax errors, a
missing ``train.init_checkpoint``, an empty training set, the demo on a missing image or weights,
test-dev submission on an unregistered dataset, conversion of a non-checkpoint, the model zoo,
a rendezvous host that never answers (a closed port on 127.0.0.1), and Ctrl-C during training
(exit status 130, a complete checkpoint and the ``--resume`` command).
"""

import datetime
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
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
from helpers.shrink import REPO, load_config
from helpers.tiny_cli import cli_process, isolated_logging, metrics, one_thread, train_args

from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.config.load import check_overrides
from eva_det.data.robust_mapper import RobustDatasetMapper
from eva_det.engine.checks import check_datasets, check_init_checkpoint, inspect_coco_json
from eva_det.engine.launch import main, run_cli, wait_for_rendezvous
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


# ----------------------------------------------------------------------------- every tool


def _tool(name):
    """tools/<name>.py as a module (detectron2's wheel installs its own top-level `tools`)."""
    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"eva_det_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exits_with_one_message(run, caplog, *expected):
    """Run ``run()``; it must exit with status 2 after one ERROR record containing ``expected``."""
    caplog.clear()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 2
    assert info.value.__cause__ is None and info.value.__suppress_context__
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def test_override_of_the_wrong_type_names_key_and_value(repo_root, monkeypatch, caplog):
    monkeypatch.chdir(repo_root)
    message = _exits_with_one_message(
        lambda: run_cli(["--config-file", SHAPES, "model.backbone.net.depth=abc"]),
        caplog,
        "model.backbone.net.depth=abc: model.backbone.net.depth must be a number",
        "got the text 'abc'",
    )
    assert "'<' not supported" not in message
    # a LazyCall argument left at its default is checked against that default
    with pytest.raises(InputError, match="use_act_checkpoint must be true or false"):
        check_overrides(load_config(SHAPES), ["model.backbone.net.use_act_checkpoint=sometimes"])
    # ints and floats stand for each other; None, interpolations and +new keys take anything
    ok = ["optimizer.lr=1", "train.max_iter=10", "train.seed=${train.max_iter}", "+x.y=abc"]
    check_overrides(load_config(SHAPES), ok)


def test_config_with_a_syntax_error_names_file_and_line(tmp_path, caplog):
    config = tmp_path / "broken.py"
    config.write_text("from detectron2.config import LazyCall as L\nmodel = dict(depth=(\n")
    _exits_with_one_message(
        lambda: run_cli(["--config-file", str(config)]),
        caplog,
        f"{config}, line 2: Python syntax error",
        "was never closed",
    )
    config.write_text("from eva_det.no_such_module import x\n")
    _exits_with_one_message(
        lambda: run_cli(["--config-file", str(config)]),
        caplog,
        f"--config-file {config} cannot be loaded: ModuleNotFoundError",
        f"{config}, line 1",
    )


def test_missing_init_checkpoint_is_named_before_building(
    tmp_path, repo_root, mini_shapes, monkeypatch, caplog
):
    monkeypatch.chdir(repo_root)
    missing = tmp_path / "no_such_weights.pth"
    for extra in ([], ["--eval-only"]):
        argv = extra + train_args(tmp_path / "out", [f"train.init_checkpoint={missing}"])
        _exits_with_one_message(
            lambda: run_cli(argv),
            caplog,
            f"train.init_checkpoint={missing}: no such file",
            "tools/convert_pretrained.py",
        )
    # --resume with a checkpoint in the output folder does not read train.init_checkpoint
    cfg = load_config(SHAPES, [f"train.init_checkpoint={missing}", f"train.output_dir={tmp_path}"])
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    check_init_checkpoint(cfg, resume=True)
    with pytest.raises(InputError):
        check_init_checkpoint(cfg, resume=False)


def test_empty_training_set_names_dataset_and_reason(
    tmp_path, repo_root, mini_shapes, register, monkeypatch
):
    monkeypatch.chdir(repo_root)
    json_file, images = _mini_train_copy(tmp_path)
    coco = json.loads(json_file.read_text())
    coco["annotations"] = []  # images, but none annotated: all dropped by filter_empty
    json_file.write_text(json.dumps(coco))
    name = register("eva_test_unannotated", json_file, images)
    argv = train_args(tmp_path / "out", [f"dataloader.train.dataset.names={name}"])
    with pytest.raises(InputError) as info, one_thread():
        main(_args(argv))
    message = str(info.value)
    assert f"the training set ['{name}'] is empty: none of its 12 images" in message
    assert "filter_empty" in message

    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**coco, "images": []}))
    name = register("eva_test_no_images", empty, images)
    argv = train_args(tmp_path / "out", [f"dataloader.train.dataset.names={name}"])
    with pytest.raises(InputError, match=f"dataset '{name}' \\({empty}\\) has no images"):
        with one_thread():
            main(_args(argv))


def test_demo_on_missing_image_or_weights(tmp_path, repo_root, monkeypatch, caplog):
    monkeypatch.chdir(repo_root)
    demo = _tool("demo")
    image = tmp_path / "street.jpg"
    out = str(tmp_path / "out")
    _exits_with_one_message(
        lambda: demo.cli(["--config-file", SHAPES, "--input", str(image), "--output", out]),
        caplog,
        f"--input {image}: no such file, folder or matching glob",
    )
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    weights = tmp_path / "eva_coco_seg.pth"
    argv = ["--config-file", SHAPES, "--weights", str(weights), "--input", str(image)]
    _exits_with_one_message(
        lambda: demo.cli(argv + ["--output", out]),
        caplog,
        f"--weights={weights}: no such file",
    )
    assert not os.path.exists(out)  # nothing written


@pytest.mark.slow  # a separate process end to end
def test_demo_tool_process_prints_one_line_and_exits_2(tmp_path, repo_root):
    image = tmp_path / "missing.jpg"
    argv = ["--config-file", SHAPES, "--input", str(image), "--output", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "tools/demo.py"] + argv,
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": repo_root, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert f"--input {image}: no such file" in output


def test_test_dev_submission_on_unregistered_dataset(tmp_path, repo_root, monkeypatch, caplog):
    monkeypatch.chdir(repo_root)
    tool = _tool("test_dev_submission")
    argv = ["--config-file", SHAPES, "--dataset", "coco_2017_test-devv", "--alg", "eva-01"]
    message = _exits_with_one_message(
        lambda: tool.cli(argv + ["--output-dir", str(tmp_path)]),
        caplog,
        "--dataset: dataset 'coco_2017_test-devv' is not registered",
        "coco_2017_test-dev",
    )
    assert "evaluator_type" not in message


def test_conversion_of_a_non_checkpoint(tmp_path, caplog):
    convert = _tool("convert_pretrained")
    text = tmp_path / "README.txt"
    text.write_text("these are not weights\n")
    out = tmp_path / "out.pth"
    _exits_with_one_message(
        lambda: convert.cli(["--input", str(text), "--output", str(out)]),
        caplog,
        f"--input {text}: ",
    )
    _exits_with_one_message(
        lambda: convert.cli(["--input", str(tmp_path / "x.pt"), "--output", str(out)]),
        caplog,
        f"--input {tmp_path / 'x.pt'}: no such file",
    )
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "not_a_vit.pth")
    _exits_with_one_message(
        lambda: convert.cli(["--input", str(tmp_path / "not_a_vit.pth"), "--output", str(out)]),
        caplog,
        f"--input {tmp_path / 'not_a_vit.pth'}: ",
    )
    assert not out.exists()


def test_model_zoo_api_and_tool(tmp_path, caplog):
    from eva_det import model_zoo

    with pytest.raises(InputError, match="Did you mean eva02_L_coco_bsl"):
        model_zoo.get_config("eva02_L_coco_bs")
    with pytest.raises(InputError, match="model.backbone.net.depth must be a number"):
        model_zoo.get_config("eva02_L_coco_bsl", overrides=["model.backbone.net.depth=abc"])
    with pytest.raises(InputError, match="train.max_iters does not exist"):
        model_zoo.get_config("eva02_L_coco_bsl", overrides=["train.max_iters=3"])
    output = tmp_path / "no_such_folder" / "MODEL_ZOO.md"
    _exits_with_one_message(
        lambda: _tool("model_zoo_doc").cli(["--output", str(output)]),
        caplog,
        f"--output {output}: give a file in an existing folder",
    )


def _closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rendezvous_host_that_never_answers(repo_root, mini_shapes, monkeypatch, caplog):
    monkeypatch.chdir(repo_root)
    url = f"tcp://127.0.0.1:{_closed_loopback_port()}"
    argv = ["--num-machines", "2", "--machine-rank", "1", "--dist-url", url]
    start = time.monotonic()
    _exits_with_one_message(
        lambda: run_cli(argv + ["--dist-timeout", "1.5", "--config-file", SHAPES]),
        caplog,
        f"--dist-url {url}: the rendezvous host did not answer within 1.5 s",
        "ConnectionRefusedError",
        "--machine-rank 0 first",
    )
    assert time.monotonic() - start < 60  # bounded, not TCPStore's 30 minutes
    monkeypatch.setenv("EVA_DET_DIST_TIMEOUT", "soon")
    _exits_with_one_message(
        lambda: run_cli(argv + ["--config-file", SHAPES]),
        caplog,
        "EVA_DET_DIST_TIMEOUT=soon: give the rendezvous timeout in seconds",
    )


def test_rendezvous_wait_returns_once_the_store_listens():
    port = _closed_loopback_port()
    timeout = datetime.timedelta(seconds=30)
    master = dist.TCPStore("127.0.0.1", port, 2, True, timeout=timeout, wait_for_workers=False)
    wait_for_rendezvous(f"tcp://127.0.0.1:{port}", timeout=30)
    # the probe's connection does not disturb the store
    client = dist.TCPStore("127.0.0.1", port, 2, False, timeout=timeout)
    client.set("probe", "ok")
    assert master.get("probe") == b"ok"


def _wait_for_iteration(output_dir, iteration, proc, timeout=600):
    start = time.time()
    while time.time() - start < timeout:
        try:
            if max(metrics(output_dir), default=-1) >= iteration:
                return
        except (OSError, ValueError):  # not written yet / a line being written
            pass
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        time.sleep(0.05)
    raise TimeoutError(f"no iteration {iteration} after {timeout} s")


@pytest.mark.slow  # a separate process end to end
def test_ctrl_c_stops_training_cleanly_with_the_resume_command(
    tmp_path, repo_root, mini_shapes, monkeypatch, caplog
):
    monkeypatch.chdir(repo_root)
    out = tmp_path / "run"
    iters = ["train.max_iter=200", "train.checkpointer.period=1000"]
    proc = cli_process(tmp_path, repo_root, train_args(out, iters))
    # early: detectron2's writers have no iteration time yet (a crash in after_train, once)
    _wait_for_iteration(out, 0, proc)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 130, output[-4000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    stopped = re.search(r"Training stopped by Ctrl-C after iteration (\d+) \(of 200\)", output)
    assert stopped, output[-4000:]
    iteration = int(stopped.group(1))
    name = f"model_{iteration:07d}.pth"
    assert f"The last complete checkpoint is {out / name}." in output
    assert (out / "last_checkpoint").read_text() == name
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f.startswith(".")]
    assert not (out / "model_final.pth").exists()
    saved = torch.load(out / name, map_location="cpu", weights_only=False)
    assert saved["iteration"] == iteration and "optimizer" in saved["trainer"]
    assert saved["data_loader"]["samples_seen"] == (iteration + 1) * 2  # batch size 2

    # the printed command is this run's with --resume, and it continues after that iteration
    command = shlex.split(output.split("To continue from it, run:\n", 1)[1].splitlines()[0])
    assert command[1].endswith("train_mini_shapes.py") and command[2] == "--resume"
    assert command[3:] == train_args(out, iters)
    resumed = command[2:] + [f"train.max_iter={iteration + 2}"]
    with one_thread():
        run_cli(resumed)
    assert sorted(metrics(out)) == list(range(iteration + 2))  # resumed at iteration + 1
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
