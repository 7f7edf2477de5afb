"""Benchmark: cost of eva_det's LVIS-api input selection inside ``evaluate_predictions_on_lvis``.

On a synthetic LVIS-style set (eva_det.utils.testing), times
``evaluate_predictions_on_lvis`` (which first drops zero-area detections / annotations and
detections of categories unknown for their image, :mod:`eva_det.evaluation.lvis_inputs`), the
selection alone, and faster-coco-eval's ``lvis_style`` scoring without it (which differs from
LVIS-api where the selection drops something and crashes on some images without ground truth).

Reproduce:
    python bench/lvis_inputs.py                     # 500 images, 50 categories
    python bench/lvis_inputs.py --images 2000
"""

import argparse
import logging
import platform
import sys
import time

from faster_coco_eval import COCO, COCOeval_faster

from eva_det.evaluation.lvis_evaluation import evaluate_predictions_on_lvis, limit_dets_per_image
from eva_det.evaluation.lvis_inputs import (
    drop_unknown_categories,
    ground_truth_in_use,
    positive_area,
)
from eva_det.utils.testing import make_detections, make_ground_truth


def _results(dets, iou_type):
    results = [dict(r) for r in limit_dets_per_image(dets, 300)]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--categories", type=int, default=50)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    print(f"python bench/lvis_inputs.py --images {args.images} --categories {args.categories}")
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")

    gt = make_ground_truth(
        num_images=args.images, num_categories=args.categories, seed=0, max_objects=20, lvis=True
    )
    dets = make_detections(gt, seed=1, false_positives_per_image=60)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} annotations, {len(dets)} dets")
    api = COCO(gt)
    for iou_type in ("bbox", "segm"):
        results = _results(dets, iou_type)
        start = time.perf_counter()
        kept = drop_unknown_categories(
            ground_truth_in_use(api.dataset), positive_area(results, iou_type)
        )
        selection = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_predictions_on_lvis(api, dets, iou_type)
        total = time.perf_counter() - start
        start = time.perf_counter()
        alone = COCOeval_faster(api, api.loadRes(results), iou_type, lvis_style=True)
        alone.params.maxDets = [300]
        alone.run()
        unfiltered = time.perf_counter() - start
        print(
            f"{iou_type}: evaluate_predictions_on_lvis {total:.2f} s (input selection "
            f"{selection:.3f} s, {len(kept)} of {len(results)} detections kept); "
            f"faster-coco-eval without selection {unfiltered:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
