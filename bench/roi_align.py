#!/usr/bin/env python
"""CPU ROIAlign forward and backward: torchvision's op vs eva_det's vectorised backward.

The training profile of the shapes recipe: batch ``--batch`` images of ``--image-size`` px, a
4-level pyramid (strides 4, 8, 16, 32) of ``--channels`` channels, ROIAlignV2 (aligned=True) with
sampling ratio ``--sampling-ratio``; the box head pools ``--box-rois`` ROIs at 7 x 7, the mask
head ``--mask-rois`` at 14 x 14. Boxes have log-uniform sides from 8 px to the image size and are
assigned to levels as detectron2's ``ROIPooler`` does (canonical 224 px at level 4).

Rows per head: ``forward`` and ``backward``: the ROIAlign op alone (``torchvision.ops.roi_align``
vs ``eva_det.layers.roi_align.roi_align``), one call per level, summed over the levels;
``pooler f+b``: forward + backward of the whole ``ROIPooler`` vs ``FastROIPooler`` (the pooler's
own level split and gathers included). Each is timed ``--repeat`` times, the two implementations
interleaved in every round, best time shown, with the ratio torchvision / eva_det (> 1: eva_det
is faster) measured in the same run. Outputs and input gradients are checked bitwise equal. On a
shared core read the ratio, not the times.

    taskset -c 1 python bench/roi_align.py                 # 1 thread, about 10 s
    taskset -c 1 python bench/roi_align.py --sampling-ratio 0 --repeat 50
"""

import argparse
import math
import time

import torch
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes
from torchvision.ops import roi_align as tv_roi_align

from eva_det.layers.roi_align import roi_align
from eva_det.modeling import FastROIPooler

STRIDES = (4, 8, 16, 32)


def make_case(batch, channels, image_size, num_rois, seed):
    """Pyramid features (list of (B, C, S/s, S/s), requiring grad) and per-image Boxes."""
    g = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(batch, channels, image_size // s, image_size // s, generator=g) for s in STRIDES
    ]
    boxes = []
    for _ in range(batch):
        n = num_rois // batch
        side = torch.exp(torch.empty(n, 2).uniform_(2.0, math.log(image_size), generator=g))
        ctr = torch.rand(n, 2, generator=g) * image_size
        xyxy = torch.cat([ctr - side / 2, ctr + side / 2], 1).clamp(0, image_size)
        boxes.append(Boxes(xyxy))
    return features, boxes


def level_cases(features, boxes):
    """Per pyramid level: (feature, its (R, 5) rois, scale), as ``ROIPooler`` assigns them."""
    rois = convert_boxes_to_pooler_format(boxes)
    levels = assign_boxes_to_levels(boxes, 2, 2 + len(STRIDES) - 1, 224, 4)
    return [(x, rois[levels == i], 1.0 / s) for i, (x, s) in enumerate(zip(features, STRIDES))]


def time_ops(impls, cases, output_size, sampling_ratio, repeat, seed):
    """Best forward and backward seconds of each op, summed over the levels; interleaved."""
    g = torch.Generator().manual_seed(seed)
    grads = [
        torch.randn(len(r), x.shape[1], output_size, output_size, generator=g) for x, r, _ in cases
    ]
    best = {name: [float("inf"), float("inf")] for name in impls}
    results = {}
    for round_ in range(repeat + 1):  # the first round is a warm-up
        for name, op in impls.items():
            fwd = bwd = 0.0
            outs = []
            for (x, rois, scale), grad in zip(cases, grads):
                leaf = x.detach().requires_grad_()
                start = time.perf_counter()
                out = op(leaf, rois, output_size, scale, sampling_ratio, True)
                mid = time.perf_counter()
                (dx,) = torch.autograd.grad(out, leaf, grad)
                fwd, bwd = fwd + mid - start, bwd + time.perf_counter() - mid
                outs.append((out, dx))
            if round_:
                best[name] = [min(best[name][0], fwd), min(best[name][1], bwd)]
            results[name] = outs
    return best, results


def time_poolers(poolers, features, boxes, grad, repeat):
    """Best forward + backward seconds of each whole pooler, interleaved; outputs and grads."""
    best = {name: float("inf") for name in poolers}
    results = {}
    for round_ in range(repeat + 1):
        for name, pooler in poolers.items():
            leaves = [f.detach().requires_grad_() for f in features]
            start = time.perf_counter()
            out = pooler(leaves, boxes)
            grads = torch.autograd.grad(out, leaves, grad)
            if round_:
                best[name] = min(best[name], time.perf_counter() - start)
            results[name] = (out, grads)
    return best, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--box-rois", type=int, default=256, help="all images, 7 x 7")
    parser.add_argument("--mask-rois", type=int, default=64, help="all images, 14 x 14")
    parser.add_argument("--sampling-ratio", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds (best shown)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [1.0 / s for s in STRIDES]

    print(
        f"B={args.batch} C={args.channels} {args.image_size} px, strides {STRIDES}, "
        f"sampling_ratio={args.sampling_ratio}, ROIAlignV2, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}"
    )
    header = f"{'head':<14}{'pass':<12}{'torchvision ms':>16}{'eva_det ms':>12}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for head, num_rois, size in (("box 7x7", args.box_rois, 7), ("mask 14x14", args.mask_rois, 14)):
        features, boxes = make_case(args.batch, args.channels, args.image_size, num_rois, args.seed)
        cases = level_cases(features, boxes)
        impls = {"tv": tv_roi_align, "eva": roi_align}
        best, results = time_ops(impls, cases, size, args.sampling_ratio, args.repeat, args.seed)
        same = all(
            torch.equal(a, b) and torch.equal(ga, gb)
            for (a, ga), (b, gb) in zip(results["tv"], results["eva"])
        )
        rows = [
            ("forward", best["tv"][0], best["eva"][0]),
            ("backward", best["tv"][1], best["eva"][1]),
        ]

        kwargs = dict(scales=scales, sampling_ratio=args.sampling_ratio, pooler_type="ROIAlignV2")
        poolers = {"tv": ROIPooler(size, **kwargs), "eva": FastROIPooler(size, **kwargs)}
        grad = torch.randn(num_rois, args.channels, size, size)
        pbest, presults = time_poolers(poolers, features, boxes, grad, args.repeat)
        (out_tv, g_tv), (out_eva, g_eva) = presults["tv"], presults["eva"]
        same = same and torch.equal(out_tv, out_eva) and all(map(torch.equal, g_tv, g_eva))
        rows.append(("pooler f+b", pbest["tv"], pbest["eva"]))
        per_level = "/".join(str(len(r)) for _, r, _ in cases)
        for name, tv_s, eva_s in rows:
            tv_ms, eva_ms = tv_s * 1e3, eva_s * 1e3
            print(f"{head:<14}{name:<12}{tv_ms:>16.3f}{eva_ms:>12.3f}{tv_ms / eva_ms:>8.2f}")
        print(f"{'':<14}ROIs per level {per_level}; outputs and input grads bitwise equal: {same}")


if __name__ == "__main__":
    main()
