"""test.amp (autocast) and test.compile_backbone in evaluation (eva_det.engine.precision)."""

import os
import time

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator
from helpers.shrink import EVA01_SHRINK, load_config
from omegaconf import OmegaConf
from torch import nn

from eva_det.engine.precision import (
    autocast_context,
    compiled_backbone,
    inference_precision,
    precision_settings,
)
from eva_det.engine.train_loop import do_test
from eva_det.errors import InputError

CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
SLOW = os.environ.get("EVA_DET_SLOW_TESTS") == "1"


def test_settings_defaults_and_overrides():
    cfg = load_config(CONFIG)
    defaults = {"amp": {"enabled": False, "dtype": "bfloat16"}, "compile_backbone": False}
    assert precision_settings(cfg) == defaults
    del cfg.test  # configs without a test section get configs/common/test.py's defaults
    assert precision_settings(cfg) == defaults
    cfg = load_config(CONFIG, ["test.amp.enabled=True", "test.compile_backbone=True"])
    assert precision_settings(cfg) == {
        "amp": {"enabled": True, "dtype": "bfloat16"},
        "compile_backbone": True,
    }
    with pytest.raises(ValueError, match="test.amp.dtype='int8'"):
        precision_settings(load_config(CONFIG, ["test.amp.dtype=int8"]))
    cfg.test.amp = {"precision": 16}
    with pytest.raises(InputError, match="precision"):
        precision_settings(cfg)


def test_autocast_context_selects_dtype():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    cfg = OmegaConf.create({"train": {"device": "cpu"}})
    with autocast_context(cfg, lin):
        assert lin(x).dtype == torch.float32
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        cfg.test = {"amp": {"enabled": True, "dtype": name}}
        with autocast_context(cfg, lin):
            y = lin(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), lin(x), atol=3e-2, rtol=3e-2)


class DtypeProbe(nn.Module):
    """Reports the dtype its Linear computes in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch):
        return [{"dtype": str(self.lin(batch).dtype)}]


class DtypeEvaluator(DatasetEvaluator):
    def reset(self):
        self.seen = []

    def process(self, inputs, outputs):
        self.seen += [o["dtype"] for o in outputs]

    def evaluate(self):  # numbers only: do_test prints the results as an AP table
        return {"probe": {"bf16": self.seen.count("torch.bfloat16") / len(self.seen)}}


def two_batches():
    return [torch.randn(1, 3), torch.randn(1, 3)]


def test_do_test_runs_under_test_amp():
    cfg = OmegaConf.create(
        {
            "train": {"device": "cpu"},
            "dataloader": {"test": L(two_batches)(), "evaluator": L(DtypeEvaluator)()},
        }
    )
    model = DtypeProbe()
    assert do_test(cfg, model)["probe"]["bf16"] == 0.0
    cfg.test = {"amp": {"enabled": True}}
    assert do_test(cfg, model)["probe"]["bf16"] == 1.0
    cfg.test.amp.enabled = False
    assert do_test(cfg, model)["probe"]["bf16"] == 0.0


@pytest.fixture(scope="module")
def tiny_detector():
    torch.manual_seed(0)
    cfg = load_config(CONFIG, EVA01_SHRINK + ["model.roi_heads.override_score_thresh=0.0"])
    model = instantiate(cfg.model).eval()
    image = torch.randint(0, 256, (3, 128, 128), generator=torch.Generator().manual_seed(1))
    return cfg, model, [{"image": image.float(), "height": 128, "width": 128}]


def test_bf16_detector_is_close_to_fp32(tiny_detector):
    """The shrunk detector's backbone features under bf16 autocast stay near fp32."""
    cfg, model, inputs = tiny_detector
    images = model.preprocess_image(inputs).tensor
    with torch.no_grad():
        ref = model.backbone(images)
        cfg.test = {"amp": {"enabled": True, "dtype": "bfloat16"}}
        with inference_precision(cfg, model):
            low = model.backbone(images)
            outputs = model(inputs)
        del cfg.test
    for name in ref:  # module outputs are float32 (residual adds, LN); matmuls ran in bf16
        err = float((low[name].float() - ref[name]).norm() / ref[name].norm())
        assert 1e-4 < err < 0.03, (name, err)
    assert len(outputs[0]["instances"]) > 0


def test_compiled_backbone_swaps_and_restores(tiny_detector):
    """The compiled ViT replaces backbone.net only inside the block, with equal outputs."""
    _, model, inputs = tiny_detector
    net, keys = model.backbone.net, list(model.state_dict())
    with torch.no_grad():
        ref = model(inputs)[0]["instances"]

        class Wrapper(nn.Module):  # like the TTA wrapper: the detector under .model
            def __init__(self, model):
                super().__init__()
                self.model = model

        with compiled_backbone(Wrapper(model), backend="eager") as compiled:
            assert model.backbone.net is compiled and compiled is not net
            got = model(inputs)[0]["instances"]
        assert model.backbone.net is net
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(got.pred_boxes.tensor, ref.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, ref.scores)
    with pytest.raises(ValueError, match="compile_backbone"):
        with compiled_backbone(nn.Linear(2, 2)):
            pass


@pytest.mark.skipif(
    not SLOW,
    reason="torch.compile (inductor) of the tiny ViT takes ~40 s on 2 CPU cores with a cold "
    "cache; set EVA_DET_SLOW_TESTS=1 to run it",
)
def test_inductor_backbone_matches_eager(tiny_detector):
    _, model, inputs = tiny_detector
    images = model.preprocess_image(inputs).tensor
    with torch.no_grad():
        ref = model.backbone.net(images)["last_feat"]
        start = time.perf_counter()
        with compiled_backbone(model) as compiled:
            got = compiled(images)["last_feat"]
        print(f"inductor compile + first run: {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
