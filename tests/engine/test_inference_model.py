"""Every tool runs a trained model the same way: EMA weights, ``test.amp``, checked overrides.

``--eval-only`` of the training CLI, ``tools/test_dev_submission.py``, ``tools/demo.py``, the
model zoo API and ``bench/amp_accuracy.py`` all build their model with
:func:`eva_det.engine.build.build_inference_model`. For each, on a shrunk shapes model on CPU:

* with ``train.model_ema.*`` asking for the EMA weights and ``test.amp.enabled=True`` (bfloat16),
  the detections equal those of the builder with the same settings, and differ from those of
  the raw weights in float32 (so the comparison can tell whether a setting was dropped);
* a misspelled override key is an InputError naming it (exit status 2 for the commands).
"""

import contextlib
import functools
import importlib.util
import io
import json
import os
import sys
import zipfile

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from helpers.shrink import EVA01_SHRINK, NARROW_HEADS, REPO, load_config
from helpers.tiny_cli import isolated_logging

from eva_det import model_zoo
from eva_det.config.load import load_config as checked_load_config
from eva_det.demo import LazyPredictor, run_demo
from eva_det.engine.build import InferenceModel, build_inference_model
from eva_det.engine.launch import run_cli
from eva_det.errors import EXIT_BAD_INPUT, InputError

CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
TINY = EVA01_SHRINK + [
    "dataloader.test.dataset.names=shapes_mini_val",
    "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.proposal_generator.post_nms_topk=[500,15]",
    "model.roi_heads.override_score_thresh=0.0",
    "train.device=cpu",
]
EMA_AMP = [
    "train.model_ema.enabled=True",
    "train.model_ema.use_ema_weights_for_eval_only=True",
    "test.amp.enabled=True",
    "test.amp.dtype=bfloat16",
]
MISSPELLED = "test.amp.enabeld=True"
# a zoo config shrunk to 128 px with the shapes test settings (its 80 COCO classes kept)
ZOO_SHRINK = (
    EVA01_SHRINK
    + NARROW_HEADS
    + [
        "model.proposal_generator.post_nms_topk=[500,15]",
        "model.roi_heads.override_score_thresh=0.0",
        "train.device=cpu",
    ]
)
TOP = 5  # detections compared per image


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_logging():
    """The tools set up the detectron2 / fvcore / eva_det loggers; later tests need them back."""
    with isolated_logging():
        yield


def _named_tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.fixture(scope="module")
def checkpoint(mini_shapes, tmp_path_factory):
    """A checkpoint whose ``model`` (seed 0) and ``ema_state`` (seed 1) weights differ."""
    cfg = load_config(CONFIG, TINY)
    torch.manual_seed(0)
    raw = instantiate(cfg.model)
    torch.manual_seed(1)
    ema = instantiate(cfg.model)
    state = {k: v.detach().clone() for k, v in _named_tensors(ema).items()}
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pth")
    torch.save({"model": raw.state_dict(), "ema_state": state}, path)
    return path


def _cfg(checkpoint, extra=()):
    return checked_load_config(CONFIG, TINY + [f"train.init_checkpoint={checkpoint}", *extra])


def _top(instances):
    """The ``TOP`` best detections of one image: [(class, (x0, y0, x1, y1), score)]."""
    order = torch.argsort(instances.scores.float(), descending=True, stable=True)[:TOP]
    boxes = instances.pred_boxes.tensor.float()
    return [
        (int(instances.pred_classes[i]), tuple(boxes[i].tolist()), float(instances.scores[i]))
        for i in order.tolist()
    ]


def _top_coco(results, image_id):
    """``_top`` of COCO-format results (category id = class + 1, xywh boxes) of one image."""
    mine = [r for r in results if r["image_id"] == image_id]
    mine.sort(key=lambda r: -r["score"])
    return [
        (r["category_id"] - 1, (x, y, x + w, y + h), r["score"])
        for r in mine[:TOP]
        for x, y, w, h in [r["bbox"]]
    ]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        ca == cb and np.allclose(ba, bb, atol=1e-3) and abs(sa - sb) < 1e-5
        for (ca, ba, sa), (cb, bb, sb) in zip(a, b)
    )


def _on_val(model: InferenceModel, cfg):
    """image id -> ``_top`` of ``model`` on the config's test loader."""
    out = {}
    for inputs in instantiate(cfg.dataloader.test):
        for inp, o in zip(inputs, model(inputs)):
            out[inp["image_id"]] = _top(o["instances"])
    return out


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The builder's detections on shapes_mini_val: EMA + bfloat16, and raw weights in fp32."""
    ema_amp = _on_val(build_inference_model(_cfg(checkpoint, EMA_AMP)), _cfg(checkpoint))
    raw_fp32 = _on_val(build_inference_model(_cfg(checkpoint)), _cfg(checkpoint))
    for image_id in ema_amp:  # the settings change every image's detections
        assert not _same(ema_amp[image_id], raw_fp32[image_id]), image_id
    return ema_amp


def _assert_matches(reference, found):
    assert sorted(found) == sorted(reference)
    for image_id, top in reference.items():
        assert _same(found[image_id], top), (image_id, found[image_id], top)


def test_builder_applies_ema_amp_and_rejects_misspelled_keys(checkpoint, reference):
    built = build_inference_model(_cfg(checkpoint, EMA_AMP))
    ema = torch.load(checkpoint, weights_only=True)["ema_state"]
    for k, v in built.detector.named_parameters():
        assert torch.equal(v, ema[k]), k
    seen = []
    built.detector.backbone.register_forward_hook(
        lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu"))
    )
    built([next(iter(instantiate(built.cfg.dataloader.test)))[0]])
    assert seen == [True] and not built.detector.training
    with pytest.raises(InputError, match=r"test.amp.enabeld"):
        _cfg(checkpoint, [MISSPELLED])


def test_eval_only(checkpoint, reference, tmp_path):
    argv = ["--eval-only", "--config-file", os.path.join(REPO, CONFIG), *TINY]
    argv.append(f"train.init_checkpoint={checkpoint}")
    run_cli(argv + [f"train.output_dir={tmp_path}", *EMA_AMP])
    with open(tmp_path / "coco_instances_results.json") as f:
        results = json.load(f)
    _assert_matches(reference, {i: _top_coco(results, i) for i in reference})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv + [f"train.output_dir={tmp_path / 'bad'}", MISSPELLED])
    assert exit_info.value.code == EXIT_BAD_INPUT


def _load_script(relpath, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def test_dev(mini_shapes, tmp_path_factory):
    """A COCO-style "test-dev" (image info only) over the shapes_mini_val images."""
    val = MetadataCatalog.get("shapes_mini_val")
    with open(val.json_file) as f:
        gt = json.load(f)
    json_file = str(tmp_path_factory.mktemp("testdev") / "image_info_test-dev2017.json")
    with open(json_file, "w") as f:
        json.dump({"images": gt["images"], "categories": gt["categories"]}, f)
    name = "shapes_builder_test-dev"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(load_coco_json, json_file, val.image_root))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=val.image_root,
        evaluator_type="coco",
        thing_classes=list(val.thing_classes),
        thing_dataset_id_to_contiguous_id=dict(val.thing_dataset_id_to_contiguous_id),
    )
    return name


def test_test_dev_submission(checkpoint, reference, test_dev, tmp_path):
    tool = _load_script("tools/test_dev_submission.py", "eva_det_builder_test_dev_tool")
    args = ["--config-file", os.path.join(REPO, CONFIG), "--dataset", test_dev, "--alg", "x"]
    args += ["--tasks", "bbox"]
    opts = TINY + [f"train.init_checkpoint={checkpoint}"]
    assert tool.main(args + ["--output-dir", str(tmp_path / "ok")] + opts + EMA_AMP) == 0
    with zipfile.ZipFile(tmp_path / "ok" / "bbox.zip") as zf:
        results = json.loads(zf.read(zf.namelist()[0]))
    _assert_matches(reference, {i: _top_coco(results, i) for i in reference})
    with pytest.raises(SystemExit) as exit_info:
        tool.cli(args + ["--output-dir", str(tmp_path / "bad")] + opts + [MISSPELLED])
    assert exit_info.value.code == EXIT_BAD_INPUT


def test_demo(checkpoint, tmp_path):
    cfg = _cfg(checkpoint, EMA_AMP)
    predictor = LazyPredictor(cfg)
    built = build_inference_model(_cfg(checkpoint, EMA_AMP))
    image = cv2.imread(DatasetCatalog.get("shapes_mini_val")[0]["file_name"])
    inputs = predictor.preprocess(image)
    assert _same(_top(predictor(image)["instances"]), _top(built([inputs])[0]["instances"]))
    raw = build_inference_model(_cfg(checkpoint))
    assert not _same(_top(predictor(image)["instances"]), _top(raw([inputs])[0]["instances"]))

    # the command draws what the predictor finds
    tool = _load_script("tools/demo.py", "eva_det_builder_demo_tool")
    os.makedirs(tmp_path / "in")
    cv2.imwrite(str(tmp_path / "in" / "a.png"), image)
    args = ["--config-file", os.path.join(REPO, CONFIG), "--input", str(tmp_path / "in")]
    args += ["--weights", checkpoint]
    args += ["--confidence-threshold", "0.0"]
    np.random.seed(0)  # the drawing's colours are random
    tool.main(args + ["--output", str(tmp_path / "out")] + TINY + EMA_AMP)
    np.random.seed(0)
    run_demo(predictor, [str(tmp_path / "in")], str(tmp_path / "ref"), 0.0)
    assert np.array_equal(
        cv2.imread(str(tmp_path / "out" / "a.png")), cv2.imread(str(tmp_path / "ref" / "a.png"))
    )
    with pytest.raises(SystemExit) as exit_info:
        tool.cli(args + ["--output", str(tmp_path / "bad")] + TINY + [MISSPELLED])
    assert exit_info.value.code == EXIT_BAD_INPUT


@pytest.mark.slow  # a full-width zoo detector, built four times
def test_model_zoo(checkpoint):
    """The zoo's entry points with the shapes recipe's own weights file as the checkpoint."""
    name = "eva_coco_seg"  # an EVA-01 Cascade Mask R-CNN; shrunk to the shapes model's shapes
    overrides = ZOO_SHRINK + EMA_AMP
    path = _zoo_checkpoint(name, overrides, checkpoint)
    built = model_zoo.get_inference_model(name, checkpoint=path, overrides=overrides)
    reference_cfg = model_zoo.get_config(name, trained=True, checkpoint=path, overrides=overrides)
    expected = build_inference_model(reference_cfg)
    raw_cfg = model_zoo.get_config(name, trained=True, checkpoint=path, overrides=ZOO_SHRINK)
    raw = build_inference_model(raw_cfg)
    inputs = [{"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}]
    got = _top(built(inputs)[0]["instances"])
    assert _same(got, _top(expected(inputs)[0]["instances"]))
    assert not _same(got, _top(raw(inputs)[0]["instances"]))
    # model_zoo.get: the same weights as a plain module (float32: it says so)
    module = model_zoo.get(name, checkpoint=path, overrides=overrides)
    for (k, v), (_, w) in zip(module.named_parameters(), built.detector.named_parameters()):
        assert torch.equal(v, w), k
    with pytest.raises(InputError, match=r"test.amp.enabeld"):
        model_zoo.get_inference_model(name, checkpoint=path, overrides=[MISSPELLED])


def _zoo_checkpoint(name, overrides, shapes_checkpoint):
    """Raw (seed 0) and EMA (seed 1) weights for the shrunk zoo model, next to the shapes one."""
    cfg = model_zoo.get_config(name, overrides=[o for o in overrides if o not in EMA_AMP])
    torch.manual_seed(0)
    raw = instantiate(cfg.model)
    torch.manual_seed(1)
    ema = instantiate(cfg.model)
    state = {k: v.detach().clone() for k, v in _named_tensors(ema).items()}
    path = os.path.join(os.path.dirname(shapes_checkpoint), f"{name}.pth")
    torch.save({"model": raw.state_dict(), "ema_state": state}, path)
    return path


def test_bench_amp_accuracy(checkpoint, reference, monkeypatch, tmp_path):
    bench = _load_script("bench/amp_accuracy.py", "eva_det_builder_amp_bench")
    opts = TINY + [f"train.init_checkpoint={checkpoint}", *EMA_AMP[:2]]
    opts.append(f"train.output_dir={tmp_path}")
    found = {}
    monkeypatch.setattr(bench, "Collect", _collecting(bench.Collect, found))
    monkeypatch.setattr(
        sys, "argv", ["amp_accuracy.py", "--config-file", os.path.join(REPO, CONFIG), *opts]
    )
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert bench.main() == 0  # runs fp32, then test.amp in bfloat16 (its default)
    assert "reproduced under bfloat16" in out.getvalue()
    # its autocast run is the builder's EMA + bfloat16 run
    _assert_matches(reference, found["bfloat16"])
    monkeypatch.setattr(
        sys, "argv", ["amp_accuracy.py", "--config-file", CONFIG, *opts, MISSPELLED]
    )
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == EXIT_BAD_INPUT


def _collecting(base, found):
    """``bench.Collect`` that also keeps ``_top`` of each run, under its label."""
    labels = iter(["fp32", "bfloat16"])

    class Collect(base):
        def reset(self):
            super().reset()
            self.label, self.top = next(labels), {}
            found[self.label] = self.top

        def process(self, inputs, outputs):
            super().process(inputs, outputs)
            for inp, out in zip(inputs, outputs):
                self.top[inp["image_id"]] = _top(out["instances"].to("cpu"))

    return Collect
