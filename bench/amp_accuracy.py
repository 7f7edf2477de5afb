#!/usr/bin/env python
"""Accuracy effect of ``test.amp``: evaluate one checkpoint in fp32 and under autocast.

Runs the config's test set twice with the same weights, fp32 (the official setting) and under
``test.amp`` (``--dtype``), through eva_det's evaluation path (the model of
:func:`eva_det.engine.build.build_inference_model`, ``inference_on_dataset`` under its
``precision()``), and prints both AP tables plus how much the detections agree: the share of
fp32 detections that the autocast run reproduces (same image and class, box IoU >= 0.9) and the
mean absolute score difference of those pairs.

    python bench/amp_accuracy.py \\
        --config-file projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py \\
        train.init_checkpoint=output/shapes_tiny/model_final.pth [key=value ...]
"""

import argparse
import sys

import torch
from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.structures import pairwise_iou

import eva_det.data  # noqa: F401  (registers the shapes datasets)
from eva_det.config.load import load_config
from eva_det.engine.build import build_inference_model
from eva_det.errors import exit_on_input_error
from eva_det.evaluation.inference import inference_on_dataset


class Collect(DatasetEvaluator):
    """Keeps every image's boxes, scores and classes (CPU)."""

    def reset(self):
        self.outputs = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self.outputs[inp["image_id"]] = (
                inst.pred_boxes,
                inst.scores.float(),
                inst.pred_classes,
            )

    def evaluate(self):
        return None


def agreement(ref: dict, other: dict, iou: float = 0.9):
    """(share of ``ref`` detections matched in ``other``, mean |score difference| of matches)."""
    matched, total, diffs = 0, 0, []
    for image_id, (boxes, scores, classes) in ref.items():
        o_boxes, o_scores, o_classes = other[image_id]
        total += len(boxes)
        if not len(boxes) or not len(o_boxes):
            continue
        ious = pairwise_iou(boxes, o_boxes)
        ious[classes[:, None] != o_classes[None, :]] = 0
        best, index = ious.max(dim=1)
        ok = best >= iou
        matched += int(ok.sum())
        diffs.append((scores[ok] - o_scores[index[ok]]).abs())
    diff = torch.cat(diffs).mean().item() if diffs else float("nan")
    return matched / max(total, 1), diff, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args()
    print("# python bench/amp_accuracy.py " + " ".join(sys.argv[1:]))
    with exit_on_input_error():  # a misspelled override: one message, exit status 2
        cfg = load_config(args.config_file, args.opts)
        model = build_inference_model(cfg)
    results, collected = {}, {}
    for label, enabled in (("fp32", False), (args.dtype, True)):
        cfg.test.amp.enabled = enabled
        cfg.test.amp.dtype = args.dtype
        collect = Collect()
        evaluator = DatasetEvaluators([instantiate(cfg.dataloader.evaluator), collect])
        with model.precision():  # reads cfg.test.amp as set above
            results[label] = inference_on_dataset(
                model.model, instantiate(cfg.dataloader.test), evaluator, progress=False
            )
        collected[label] = collect.outputs
    print(f"{'task':<6} {'metric':<6} {'fp32':>8} {args.dtype:>9}")
    for task in results["fp32"]:
        for metric in ("AP", "AP50", "AP75"):
            values = [results[k][task].get(metric, float("nan")) for k in results]
            print(f"{task:<6} {metric:<6} {values[0]:8.3f} {values[1]:9.3f}")
    share, diff, total = agreement(collected["fp32"], collected[args.dtype])
    print(
        f"detections: {total} in fp32; {share:.1%} reproduced under {args.dtype} "
        f"(same class, IoU >= 0.9), mean |score difference| {diff:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
