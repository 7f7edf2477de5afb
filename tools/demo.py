#!/usr/bin/env python
"""Run an eva_det LazyConfig detector on images, folders and videos; write drawn copies.

    python tools/demo.py \\
        --config-file projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py \\
        --weights eva_coco_seg.pth --input photos/ 'clips/*.mp4' street.jpg --output demo_out \\
        --confidence-threshold 0.5 [key=value ...]

Images keep their names (paths relative to a folder input); videos are written as
``<name>.mp4``. Overrides (``key=value``) go after the options or after ``--opts``; ``--weights P``
is short for ``train.init_checkpoint=P``. The config's ``test.aug`` (TTA), ``test.amp`` (autocast)
and ``test.compile_backbone`` apply. All the work is done by :mod:`eva_det.demo`.
"""

import argparse
import logging
import os
import re
import sys
from typing import List, Optional, Tuple

# a dotted config key followed by "=", e.g. model.roi_heads.override_score_thresh=0.0
_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """Parse the command line; returns the arguments and the config overrides."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="image or video files, folders (searched recursively for images) or globs",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the drawings")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="lowest score drawn"
    )
    parser.add_argument("--weights", default=None, help="checkpoint (train.init_checkpoint)")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides"
    )
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)
    # `--input a.jpg train.device=cpu`: nargs="+" swallows trailing overrides; move them back
    inputs, moved = [], []
    for token in args.input:
        is_override = bool(_OVERRIDE.match(token)) and not os.path.exists(token)
        (moved if is_override else inputs).append(token)
    if not inputs:
        parser.error("--input needs at least one file, folder or glob")
    args.input = inputs
    overrides = moved + list(args.overrides or []) + list(args.opts or [])
    if args.weights:
        overrides.append(f"train.init_checkpoint={args.weights}")
    return args, overrides


def main(argv: Optional[List[str]] = None) -> List[str]:
    """Run the demo; returns the files written.

    Raises:
        InputError: bad config, override, weights file or input (see docs/TROUBLESHOOTING.md).
    """
    from detectron2.utils.logger import setup_logger

    from eva_det.config.load import load_config
    from eva_det.demo import LazyPredictor, expand_inputs, run_demo
    from eva_det.demo.predictor import set_score_threshold
    from eva_det.engine.checks import check_init_checkpoint

    args, overrides = parse_args(argv)
    setup_logger(name="eva_det", abbrev_name="eva_det", enable_propagation=True)
    setup_logger(name="fvcore")
    logger = logging.getLogger("eva_det.demo")
    cfg = load_config(args.config_file, overrides)
    check_init_checkpoint(cfg, option="--weights" if args.weights else "train.init_checkpoint")
    expand_inputs(args.input, args.output)  # bad inputs fail before the model is built
    set_score_threshold(cfg, args.confidence_threshold)
    predictor = LazyPredictor(cfg)
    written = run_demo(predictor, args.input, args.output, args.confidence_threshold)
    logger.info("Wrote %d file(s) to %s", len(written), args.output)
    return written


def cli(argv: Optional[List[str]] = None) -> int:
    """``main`` as a command: bad input is one message and exit status 2, no traceback."""
    from eva_det.errors import exit_on_input_error

    with exit_on_input_error():
        main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
