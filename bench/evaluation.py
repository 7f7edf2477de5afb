"""Benchmark: pycocotools vs faster-coco-eval COCO scoring, as eva_det's COCOEvaluator runs it.

Builds a synthetic COCO-style set in memory (eva_det.utils.testing), scores the same
detections with both backends of ``eva_det.evaluation.evaluate_predictions_on_coco`` (results
loading + evaluate + accumulate + summarize; the ground-truth index is built outside the timer)
and checks that all 12 summary stats and the full precision table agree.

Reproduce:
    python bench/evaluation.py                      # 1000 images, bbox and segm
    python bench/evaluation.py --images 5000 --no-segm
"""

import argparse
import copy
import logging
import sys
import time

import numpy as np

from eva_det.evaluation import coco_api_for_backend, evaluate_predictions_on_coco
from eva_det.utils.testing import make_detections, make_ground_truth

BACKENDS = ("pycocotools", "faster_coco_eval")


def time_backend(gt, dets, iou_type, backend, repeat):
    """Best wall time of ``repeat`` runs and the evaluator of the last one."""
    best, coco_eval = float("inf"), None
    for _ in range(repeat):
        coco_gt = coco_api_for_backend(copy.deepcopy(gt), backend)  # scoring mutates the gt dicts
        start = time.perf_counter()
        coco_eval = evaluate_predictions_on_coco(coco_gt, dets, iou_type, backend=backend)
        best = min(best, time.perf_counter() - start)
    return best, coco_eval


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--max-objects", type=int, default=15, help="gt instances per image")
    parser.add_argument("--false-positives", type=int, default=20, help="per image")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend; best is shown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-segm", action="store_true", help="bbox only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    start = time.perf_counter()
    gt = make_ground_truth(
        args.images, args.categories, seed=args.seed, max_objects=args.max_objects
    )
    dets = make_detections(gt, seed=args.seed + 1, false_positives_per_image=args.false_positives)
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['categories'])} categories, "
        f"{len(gt['annotations'])} gt, {len(dets)} detections "
        f"(built in {time.perf_counter() - start:.1f} s)"
    )

    header = f"{'task':<5} {'pycocotools':>12} {'faster_coco_eval':>17} {'speedup':>8}"
    header += f" {'AP (both)':>10} {'max |diff| stats':>17} {'max |diff| precision':>21}"
    print(header)
    print("-" * len(header))
    ok = True
    for iou_type in ("bbox",) if args.no_segm else ("bbox", "segm"):
        times, evals = {}, {}
        for backend in BACKENDS:
            times[backend], evals[backend] = time_backend(gt, dets, iou_type, backend, args.repeat)
        ref, fast = evals["pycocotools"], evals["faster_coco_eval"]
        stats_diff = float(np.max(np.abs(ref.stats[:12] - fast.stats[:12])))
        prec_diff = float(np.max(np.abs(ref.eval["precision"] - fast.eval["precision"])))
        ok &= stats_diff < 1e-9 and prec_diff < 1e-9
        print(
            f"{iou_type:<5} {times['pycocotools']:>11.2f}s {times['faster_coco_eval']:>16.2f}s "
            f"{times['pycocotools'] / times['faster_coco_eval']:>7.1f}x "
            f"{ref.stats[0] * 100:>10.3f} {stats_diff:>17.2e} {prec_diff:>21.2e}"
        )
    cmd = " ".join(["python", "bench/evaluation.py"] + (argv if argv is not None else sys.argv[1:]))
    print(f"\nstats equal: {'yes' if ok else 'NO'}\nreproduce: {cmd}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
