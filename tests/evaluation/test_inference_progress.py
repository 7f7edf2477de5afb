"""eva_det's inference_on_dataset (progress bar, batched mask paste) against detectron2's.

* the loop: same evaluator calls, callbacks, timing logs and results as detectron2's
  ``inference_on_dataset``, plus a tqdm bar with images/s on stderr;
* the batched paste / RLE of :mod:`eva_det.layers.mask_rle`: bit- and byte-identical to
  detectron2's ``paste_masks_in_image`` + pycocotools ``encode``, including the cases that decide
  run boundaries (masks touching the image border, runs crossing columns, saturated masks);
* :class:`FastRCNNPostprocess`: outputs equal to ``model(inputs)`` field by field.
"""

import json
import logging

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator
from detectron2.evaluation import inference_on_dataset as d2_inference_on_dataset
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.layers.mask_ops import paste_masks_in_image as d2_paste_masks_in_image
from helpers.masks import encode_bitmasks
from helpers.shrink import EVA01_SHRINK, load_config

from eva_det.evaluation import COCOEvaluator
from eva_det.evaluation.inference import inference_on_dataset
from eva_det.layers.mask_rle import (
    paste_masks_in_image,
    paste_masks_rle,
    rles_from_crops,
)
from eva_det.modeling.postprocess import FastRCNNPostprocess, supports_fast_postprocess

CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
TINY = EVA01_SHRINK + [
    "dataloader.test.num_workers=0",
    "dataloader.test.dataset.names=shapes_mini_val",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.proposal_generator.post_nms_topk=[500,20]",
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.override_score_thresh=0.0",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread; on a busy machine two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(mini_shapes):
    cfg = load_config(CONFIG, TINY)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    batches = list(instantiate(cfg.dataloader.test))
    return cfg, model, batches


# ------------------------------------------------------------------------------------------------
# the inference loop


class _Recorder(DatasetEvaluator):
    """Evaluator that records the calls it receives."""

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def process(self, inputs, outputs):
        self.calls.append(("process", [x["image_id"] for x in inputs], len(outputs)))

    def evaluate(self):
        self.calls.append("evaluate")
        return {"task": {"n": len(self.calls)}}


def test_loop_calls_evaluator_and_callbacks_like_detectron2(tiny, caplog, capsys):
    _, model, batches = tiny
    events = []
    callbacks = {k: (lambda k=k: events.append(k)) for k in
                 ("on_start", "before_inference", "after_inference", "on_end")}  # fmt: skip
    ours, theirs = _Recorder(), _Recorder()
    model.train()  # both loops must switch to eval and back
    log = logging.getLogger("eva_det.evaluation.inference")
    log.addHandler(caplog.handler)  # a CLI test may have stopped "eva_det" from propagating
    try:
        with caplog.at_level(logging.INFO, logger=log.name):
            result = inference_on_dataset(model, batches, ours, callbacks, progress=True)
    finally:
        log.removeHandler(caplog.handler)
    assert model.training
    d2_result = d2_inference_on_dataset(model, batches, theirs)
    model.eval()
    assert ours.calls == theirs.calls and result == d2_result
    assert events == ["on_start"] + ["before_inference", "after_inference"] * 6 + ["on_end"]
    assert "Total inference time" in caplog.text
    assert "Total inference pure compute time" in caplog.text
    bar = capsys.readouterr().err
    assert "6/6" in bar and "img/s" in bar

    inference_on_dataset(model, batches, _Recorder(), progress=False)
    assert "img/s" not in capsys.readouterr().err


def test_loop_gives_detectron2_coco_results(tiny, tmp_path):
    """Masks go straight to RLE for COCOEvaluator: same results file, same AP table."""
    cfg, model, batches = tiny
    tables, files = [], []
    for name, loop in [("d2", d2_inference_on_dataset), ("ours", inference_on_dataset)]:
        evaluator = COCOEvaluator("shapes_mini_val", output_dir=str(tmp_path / name))
        tables.append(loop(model, batches, evaluator))
        with open(tmp_path / name / "coco_instances_results.json") as f:
            files.append(json.load(f))
    assert set(tables[1]) == {"bbox", "segm"}
    assert len(files[0]) > 30 and files[1] == files[0]
    np.testing.assert_equal(tables[1], tables[0])  # NaN == NaN for empty area ranges


def test_loop_accepts_plain_callables_and_no_evaluator():
    seen = []
    result = inference_on_dataset(lambda batch: seen.append(batch) or [], [[1], [2]], None,
                                  progress=False)  # fmt: skip
    assert result == {} and seen == [[1], [2]]


# ------------------------------------------------------------------------------------------------
# batched paste and RLE


def _random_case(seed, height, width, n=120):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 28, 28, generator=g) * 4
    logits[: n // 4] += 30  # saturated: probabilities of exactly 1.0
    size = torch.tensor([width, height], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=g) * size * 1.2 - size * 0.1
    wh = torch.rand(n, 2, generator=g) * size * 1.3 + 0.05
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    # full-height boxes: runs of ones continue from one column into the next
    boxes[:4] = torch.tensor(
        [[0.0, 0.0, width, height], [0.0, 0.0, 2.5, height], [width - 3.2, 0.0, width, height],
         [1.3, 0.0, 7.0, height]]
    )  # fmt: skip
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return logits.sigmoid()[keep], boxes[keep]


@pytest.mark.parametrize("seed, height, width", [(0, 57, 83), (1, 128, 128), (2, 33, 20),
                                                 (3, 200, 150)])  # fmt: skip
@pytest.mark.parametrize("chunk_bytes", [256 * 1024**2, 50_000])
def test_batched_paste_and_rle_equal_detectron2_and_pycocotools(seed, height, width, chunk_bytes):
    masks, boxes = _random_case(seed, height, width)
    reference = d2_paste_masks_in_image(masks, boxes, (height, width))
    pasted = paste_masks_in_image(masks, boxes, (height, width), max_chunk_bytes=chunk_bytes)
    assert pasted.dtype == torch.bool and torch.equal(pasted, reference)
    rles = paste_masks_rle(masks, boxes, (height, width), max_chunk_bytes=chunk_bytes)
    assert rles == encode_bitmasks(reference.numpy())
    assert any(r["counts"] != encode_bitmasks([np.zeros((height, width), bool)])[0]["counts"]
               for r in rles)  # fmt: skip


@pytest.mark.parametrize(
    "pixels",
    [[], [(0, 0)], [(4, 5)], [(0, 0), (4, 5)], "all", [(4, 0), (0, 1)], [(3, 2), (4, 2), (0, 3)]],
)
def test_rle_from_crop_edge_cases(pixels):
    """First / last pixel set, everything set, runs continuing across a column boundary."""
    mask = np.zeros((5, 6), dtype=bool)
    if pixels == "all":
        mask[:] = True
    for y, x in pixels if pixels != "all" else []:
        mask[y, x] = True
    crops = torch.from_numpy(mask)[None]
    regions = torch.tensor([[0, 0, 5, 6]])
    rle = rles_from_crops(crops, regions, (5, 6))[0]
    assert rle == mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    # the same mask as a crop placed inside a larger image
    big = np.zeros((9, 10), dtype=bool)
    big[2:7, 3:9] = mask
    rle = rles_from_crops(crops, torch.tensor([[2, 3, 7, 9]]), (9, 10))[0]
    assert rle == mask_util.encode(np.asfortranarray(big.astype(np.uint8)))


def test_fast_postprocess_equals_model_outputs(tiny):
    _, model, batches = tiny
    assert supports_fast_postprocess(model)
    bitmask = FastRCNNPostprocess(model)
    rle = FastRCNNPostprocess(model, mask_format="rle", max_dets_per_image=10)
    total = 0
    with torch.no_grad():
        for batch in batches[:3]:
            want = model(batch)[0]["instances"]
            got = bitmask(batch)[0]["instances"]
            assert want.image_size == got.image_size
            assert sorted(want.get_fields()) == sorted(got.get_fields())
            for name in want.get_fields():
                a, b = want.get(name), got.get(name)
                assert torch.equal(getattr(a, "tensor", a), getattr(b, "tensor", b)), name
            out = rle(batch)[0]
            assert out["num_before_cap"] == len(want)
            order = torch.sort(want.scores, descending=True, stable=True).indices[:10]
            top = want[order]
            assert [r["segmentation"] for r in instances_to_coco_json(top, 0)] == out[
                "instances"
            ].pred_masks_rle
            assert torch.equal(out["instances"].scores, top.scores)
            total += len(want)
    assert total > 30  # score threshold 0 + soft-NMS keep many detections


def test_fast_postprocess_refuses_other_models():
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        FastRCNNPostprocess(torch.nn.Linear(2, 2))
    assert not supports_fast_postprocess(torch.nn.Linear(2, 2))
