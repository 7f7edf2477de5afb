#!/usr/bin/env python
"""Run a model on a COCO / LVIS test set and write the zips the evaluation server accepts.

Example (EVA-01 on COCO test-dev; boxes without maskness, masks with it, as EVA reports them)::

    python tools/test_dev_submission.py \\
        --config-file projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py \\
        --dataset coco_2017_test-dev --alg eva-01 --output-dir out/test-dev-box --tasks bbox \\
        train.init_checkpoint=eva_coco_det.pth model.roi_heads.use_soft_nms=True \\
        model.roi_heads.method=linear model.roi_heads.iou_threshold=0.6 \\
        model.roi_heads.override_score_thresh=0.0

writes ``out/test-dev-box/bbox.zip`` holding ``detections_test-dev2017_eva-01_results.json``.
The mask upload: the same with ``--tasks segm --output-dir out/test-dev-mask`` and
``model.roi_heads.maskness_thresh=0.5`` appended (writes ``segm.zip``). LVIS test sets
(``lvis_v1_test_dev``) get ``segm.zip`` with at most 300 detections per image.
A rerun with the same arguments resumes from ``<output-dir>/cache``. One process (one GPU).
All the work is done by :func:`eva_det.submission.run_submission`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from detectron2.utils.logger import setup_logger

from eva_det.config.load import load_config
from eva_det.engine.checks import check_dataset, check_init_checkpoint
from eva_det.errors import exit_on_input_error
from eva_det.submission import DEFAULT_SHARD_SIZE, run_submission


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument(
        "--dataset", required=True, help="registered test set, e.g. coco_2017_test-dev"
    )
    parser.add_argument(
        "--alg", required=True, help="algorithm name for the results file (letters, digits, -)"
    )
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="zips and cache/")
    parser.add_argument(
        "--max-dets-per-image",
        type=int,
        default=None,
        help="per-image cap, best scores kept (default: COCO 100, LVIS 300)",
    )
    parser.add_argument(
        "--tasks",
        type=lambda text: text.split(","),
        default=None,
        help="zips to write, comma-separated: bbox, segm or bbox,segm "
        "(default: COCO bbox,segm; LVIS segm)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="images per cache shard"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, key=value (LazyConfig syntax)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run inference and packaging; returns the process exit status.

    Raises:
        InputError: bad config, override, dataset, checkpoint or option
            (see docs/TROUBLESHOOTING.md).
    """
    args = parse_args(argv)
    setup_logger(name="detectron2")
    # propagate, so that in-process callers (tests) still see the records on the root logger
    setup_logger(name="eva_det", abbrev_name="eva_det", enable_propagation=True)
    import eva_det.data  # noqa: F401  (registers eva_det's datasets)

    cfg = load_config(args.config_file, args.opts)
    check_dataset(args.dataset, "--dataset")
    check_init_checkpoint(cfg)
    report = run_submission(
        cfg,
        args.dataset,
        args.alg,
        args.output_dir,
        max_dets_per_image=args.max_dets_per_image,
        tasks=args.tasks,
        shard_size=args.shard_size,
    )
    for task, path in report.zips.items():
        logging.getLogger("eva_det").info(f"Upload {path} for {task}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``main`` as a command: bad input is one message and exit status 2, no traceback."""
    with exit_on_input_error():
        return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
