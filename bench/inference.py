"""Benchmark: where EVA's evaluation protocol spends its time after the network, and images/s.

Runs the tiny shapes detector (random weights) with EVA-01's evaluation settings (soft-NMS,
score threshold 0: hundreds to thousands of detections per image) and times, on the same
batches:

* ``network``: ``model.inference(inputs, do_postprocess=False)`` (backbone, RPN, cascade, mask
  head, soft-NMS);
* ``d2 paste``: detectron2's ``detector_postprocess`` (masks pasted one by one on CPU) vs
  ``fast paste``: eva_det's batched paste (:class:`FastRCNNPostprocess`, "bitmask"); outputs are
  checked to be equal;
* ``d2 encode``: ``instances_to_coco_json`` (pycocotools per full-image mask) vs ``fast rle``:
  eva_det's paste + RLE from box crops ("rle"); the RLE strings are checked to be equal;
* end to end with ``COCOEvaluator``: detectron2's ``inference_on_dataset`` vs eva_det's (progress
  bar, batched paste); the AP tables are checked to be equal.

    python bench/inference.py --images 8 --threads 1
    python bench/inference.py --images 8 --image-size 640 --proposals 1000   # COCO-like sizes
"""

import argparse
import copy
import logging
import os
import sys
import tempfile
import time

import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.evaluation import inference_on_dataset as d2_inference_on_dataset
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances

from eva_det.data.datasets.shapes import ensure_shapes, register_shapes
from eva_det.evaluation.inference import inference_on_dataset
from eva_det.modeling.postprocess import FastRCNNPostprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
EVA01_EVAL = [
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.method=linear",
    "model.roi_heads.iou_threshold=0.6",
    "model.roi_heads.override_score_thresh=0.0",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="images of the shapes split")
    parser.add_argument("--image-size", type=int, default=256, help="shapes image side, px")
    parser.add_argument("--proposals", type=int, default=200, help="test proposals per image")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="end-to-end runs of each loop")
    parser.add_argument("--root", default=None, help="where the shapes split is generated")
    return parser.parse_args()


def clone(inst: Instances) -> Instances:
    """Deep copy (detector_postprocess rescales boxes in place)."""
    return Instances(inst.image_size, **{k: copy.deepcopy(v) for k, v in inst.get_fields().items()})


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    root = args.root or os.path.join(tempfile.gettempdir(), "eva_det_bench_shapes")
    name = f"shapes_bench_{args.image_size}_{args.images}"
    register_shapes(root=root, splits={name: (name, args.images)}, image_size=args.image_size)
    ensure_shapes(name)
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(os.path.join(REPO, CONFIG)),
        EVA01_EVAL
        + [
            f"dataloader.test.dataset.names={name}",
            "dataloader.test.num_workers=0",
            f"model.proposal_generator.post_nms_topk=[1000,{args.proposals}]",
            f"train.device={args.device}",
            "dataloader.evaluator.output_dir=None",
        ],
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(args.device).eval()
    batches = list(instantiate(cfg.dataloader.test))
    bitmask, rle = FastRCNNPostprocess(model), FastRCNNPostprocess(model, mask_format="rle")

    t = dict.fromkeys(["network", "d2 paste", "fast paste", "d2 encode", "fast rle"], 0.0)
    num_dets = 0
    with torch.no_grad():
        for batch in batches:
            raw, dt = timed(model.inference, batch, None, False)
            t["network"] += dt
            (h, w), inst = (batch[0]["height"], batch[0]["width"]), raw[0]
            want, dt = timed(GeneralizedRCNN._postprocess, [clone(inst)], batch, [inst.image_size])
            t["d2 paste"] += dt
            want = want[0]["instances"].to("cpu")
            got, dt = timed(bitmask._postprocess_one, clone(inst), h, w)
            t["fast paste"] += dt
            assert torch.equal(got[0].pred_masks.cpu(), want.pred_masks), "bitmasks differ"
            coco, dt = timed(instances_to_coco_json, want, 0)
            t["d2 encode"] += dt
            fast, dt = timed(rle._postprocess_one, clone(inst), h, w)
            t["fast rle"] += dt
            assert [r["segmentation"] for r in coco] == fast[0].pred_masks_rle, "RLEs differ"
            num_dets += len(want)

    n = len(batches)
    print(
        f"{n} images of {args.image_size} px, {num_dets / n:.0f} detections/image, "
        f"{args.threads} thread(s), device {args.device}"
    )
    for key, value in t.items():
        print(f"  {key:<11} {value / n * 1000:9.1f} ms/image")
    print(
        f"  paste: {t['d2 paste'] / t['fast paste']:.1f}x faster; paste + encode: "
        f"{(t['d2 paste'] + t['d2 encode']) / t['fast rle']:.1f}x faster"
    )

    evaluator = instantiate(cfg.dataloader.evaluator)
    d2_time = our_time = float("inf")
    for _ in range(args.repeat):  # alternate, keep the best of each (the machine may be shared)
        theirs, dt = timed(d2_inference_on_dataset, model, batches, evaluator)
        d2_time = min(d2_time, dt)
        ours, dt = timed(inference_on_dataset, model, batches, evaluator, None, progress=False)
        our_time = min(our_time, dt)
        np.testing.assert_equal(ours, theirs)
    print(
        f"  end to end with COCOEvaluator (best of {args.repeat}): detectron2 "
        f"{n / d2_time:.2f} img/s, eva_det {n / our_time:.2f} img/s "
        f"(AP tables equal: bbox AP {ours['bbox']['AP']:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
