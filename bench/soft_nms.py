"""Benchmark: class-parallel ``batched_soft_nms`` against the sequential mmcv-style loop.

Builds one image's worth of EVA-01 evaluation boxes (score threshold 0, so every proposal has a
box and a score for every class), checks that both implementations agree, and times them.

    python bench/soft_nms.py --device cpu --num-proposals 1000 --num-classes 80 --repeat 3
"""

import argparse
import math
import sys
import time
from typing import Callable, Tuple

import torch

from eva_det.layers.soft_nms import batched_soft_nms
from eva_det.utils.testing import soft_nms_sequential_reference


def make_case(
    num_proposals: int, num_classes: int, seed: int = 0, image_size: Tuple[int, int] = (1152, 1536)
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image of second-stage outputs, flattened to (box, class) pairs as EVA passes them.

    Proposals cluster around a few objects (plus some background boxes); each class gets its own
    box jittered around the proposal; scores are a softmax over the classes and background, with
    the object's class (or background) boosted.

    Returns:
        boxes (Tensor): (P * K, 4) float32 boxes clipped to the image.
        scores (Tensor): (P * K,) float32 class probabilities.
        idxs (Tensor): (P * K,) int64 class ids.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    num_objects = 15
    obj_wh = torch.exp(
        torch.empty(num_objects, 2).uniform_(math.log(16), math.log(600), generator=g)
    )
    obj_ctr = torch.rand(num_objects, 2, generator=g) * torch.tensor([width, height])
    obj_cls = torch.randint(0, num_classes, (num_objects,), generator=g)

    # 80% of proposals jittered around an object, 20% anywhere.
    on_obj = torch.rand(num_proposals, generator=g) < 0.8
    which = torch.randint(0, num_objects, (num_proposals,), generator=g)
    jitter = torch.randn(num_proposals, 2, generator=g) * 0.15
    wh = obj_wh[which] * torch.exp(torch.randn(num_proposals, 2, generator=g) * 0.15)
    ctr = obj_ctr[which] + jitter * obj_wh[which]
    bg_wh = torch.exp(
        torch.empty(num_proposals, 2).uniform_(math.log(8), math.log(800), generator=g)
    )
    bg_ctr = torch.rand(num_proposals, 2, generator=g) * torch.tensor([width, height])
    wh = torch.where(on_obj[:, None], wh, bg_wh)
    ctr = torch.where(on_obj[:, None], ctr, bg_ctr)

    # Class-specific boxes: (P, K, 4).
    cls_ctr = (
        ctr[:, None] + torch.randn(num_proposals, num_classes, 2, generator=g) * 0.05 * wh[:, None]
    )
    cls_wh = wh[:, None] * torch.exp(torch.randn(num_proposals, num_classes, 2, generator=g) * 0.05)
    boxes = torch.cat([cls_ctr - cls_wh / 2, cls_ctr + cls_wh / 2], dim=-1)
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height)

    # Softmax over K classes + background.
    logits = torch.randn(num_proposals, num_classes + 1, generator=g)
    boost = torch.empty(num_proposals).uniform_(2.0, 10.0, generator=g)
    target = torch.where(on_obj, obj_cls[which], torch.full_like(which, num_classes))
    logits[torch.arange(num_proposals), target] += boost
    scores = logits.softmax(dim=1)[:, :num_classes]

    idxs = torch.arange(num_classes).expand(num_proposals, -1)
    return boxes.reshape(-1, 4), scores.reshape(-1), idxs.reshape(-1)


def compare(result, expected) -> Tuple[float, int]:
    """Check ``result`` against ``expected``; return (max relative score difference, tie swaps).

    Both must keep the same boxes with the same scores; their orders may differ only between
    boxes whose expected scores are exactly equal (exact ties are broken differently, see
    ``batched_soft_nms``). Exits with an error message otherwise.
    """
    keep, scores = (t.cpu() for t in result)
    exp_keep, exp_scores = (t.cpu() for t in expected)
    if sorted(keep.tolist()) != sorted(exp_keep.tolist()):
        sys.exit(f"MISMATCH: kept {keep.numel()} boxes, the reference kept {exp_keep.numel()}")
    exp_of = dict(zip(exp_keep.tolist(), exp_scores.tolist()))
    ours_as_ref = torch.tensor([exp_of[k] for k in keep.tolist()], dtype=torch.float32)
    if keep.numel() == 0:
        return 0.0, 0
    # Relative differences: 0 for linear / naive; float32 exp rounding for gaussian.
    max_diff = ((scores - ours_as_ref).abs() / ours_as_ref.abs()).max().item()
    order_diff = ((ours_as_ref - exp_scores).abs() / exp_scores.abs()).max().item()
    if max_diff > 1e-5 or order_diff > 1e-5:
        sys.exit(f"MISMATCH: max relative score difference {max_diff:.2e}, order {order_diff:.2e}")
    return max_diff, int((keep != exp_keep).sum())


def time_fn(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-proposals", type=int, default=1000)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of batched_soft_nms")
    parser.add_argument(
        "--ref-repeat", type=int, default=1, help="timed runs of the sequential reference"
    )
    parser.add_argument("--method", default="linear", choices=["linear", "gaussian", "naive"])
    parser.add_argument("--iou-threshold", type=float, default=0.6)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--min-score", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--class-agnostic", action="store_true", help="one soft-NMS over all classes together"
    )
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    boxes, scores, idxs = make_case(args.num_proposals, args.num_classes, args.seed)
    if args.class_agnostic:
        idxs = torch.zeros_like(idxs)
    boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
    kwargs = dict(
        method=args.method,
        iou_threshold=args.iou_threshold,
        sigma=args.sigma,
        min_score=args.min_score,
    )

    def run_ref():
        return soft_nms_sequential_reference(boxes, scores, idxs, **kwargs)

    def run_fast():
        return batched_soft_nms(boxes, scores, idxs, **kwargs)

    # Correctness first (this also warms both up).
    max_diff, tie_swaps = compare(run_fast(), run_ref())
    keep, _ = run_fast()

    t_ref = time_fn(run_ref, args.ref_repeat, device)
    t_fast = time_fn(run_fast, args.repeat, device)
    num_cand = int((scores >= args.min_score).sum())
    flags = " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "class_agnostic"
    )
    agnostic = " --class-agnostic" if args.class_agnostic else ""
    print(f"reproduce: python bench/soft_nms.py {flags}{agnostic}")
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.method} "
        f"thr={args.iou_threshold} min_score={args.min_score}"
    )
    print(
        f"boxes {boxes.shape[0]} ({args.num_proposals} proposals x {args.num_classes} classes"
        f"{', class-agnostic' if args.class_agnostic else ''}), >= min_score {num_cand}, "
        f"kept {keep.numel()}"
    )
    print(
        f"outputs equal: same kept boxes, max relative score difference {max_diff:.1e}, order "
        f"identical except {tie_swaps} positions among exactly tied scores"
    )
    print(f"{'implementation':<34}{'runs':>6}{'best time (s)':>16}")
    print(f"{'soft_nms_sequential_reference':<34}{args.ref_repeat:>6}{t_ref:>16.3f}")
    print(f"{'batched_soft_nms':<34}{args.repeat:>6}{t_fast:>16.3f}")
    print(f"speed-up: {t_ref / t_fast:.1f}x")


if __name__ == "__main__":
    main()
