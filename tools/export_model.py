#!/usr/bin/env python
"""Export an eva_det LazyConfig detector to ONNX or TorchScript (see docs/DEPLOY.md).

    python tools/export_model.py \\
        --config-file projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py \\
        --format onnx --output exported/ --weights eva_coco_seg.pth [--verify] [key=value ...]

Writes ``backbone.{onnx,ts}`` (ViT + simple feature pyramid), ``detector.{onnx,ts}`` (the whole
Cascade Mask R-CNN, detectron2's TracingAdapter conventions) and ``export_info_<format>.json``,
at the config's fixed input size (``model.backbone.square_pad``). ``--weights P`` is short for
``train.init_checkpoint=P``. ``--verify`` runs each graph (onnxruntime on the CPU, or
TorchScript) and compares it with the PyTorch model. All the work is done by :mod:`eva_det.export`.
"""

import argparse
import logging
import sys
from typing import List, Optional, Tuple

PARTS = {"all": ("backbone", "detector"), "backbone": ("backbone",), "detector": ("detector",)}


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """Parse the command line; returns the arguments and the config overrides."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
    parser.add_argument("--format", required=True, help="onnx or torchscript")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the graphs")
    parser.add_argument("--weights", default=None, help="checkpoint (train.init_checkpoint)")
    parser.add_argument(
        "--part", default="all", help="all (default), backbone or detector: which graphs"
    )
    parser.add_argument(
        "--verify", action="store_true", help="compare each graph with the PyTorch model"
    )
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)
    overrides = list(args.overrides or [])
    if args.weights:
        overrides.append(f"train.init_checkpoint={args.weights}")
    return args, overrides


def main(argv: Optional[List[str]] = None) -> dict:
    """Export; returns the written graphs by part (:class:`eva_det.export.ExportedGraph`).

    Raises:
        InputError: bad config, override, format, part, weights file or an option that cannot
            be exported (see docs/TROUBLESHOOTING.md).
    """
    from detectron2.utils.logger import setup_logger

    from eva_det.config.load import load_config
    from eva_det.engine.checks import check_init_checkpoint
    from eva_det.errors import InputError
    from eva_det.export import check_exportable, export_model
    from eva_det.export.export import NOT_EXPORTED

    args, overrides = parse_args(argv)
    setup_logger(name="eva_det", abbrev_name="eva_det", enable_propagation=True)
    setup_logger(name="fvcore")
    logger = logging.getLogger("eva_det.export")
    if args.part not in PARTS:
        raise InputError(f"--part {args.part}: use one of {', '.join(PARTS)}.")
    cfg = load_config(args.config_file, overrides)
    check_init_checkpoint(cfg, option="--weights" if args.weights else "train.init_checkpoint")
    check_exportable(cfg, args.format)  # before the model is built
    graphs = export_model(
        cfg,
        args.format,
        args.output,
        load_weights=True,
        parts=PARTS[args.part],
        verify=args.verify,
    )
    logger.info("Not in the graphs: %s.", "; ".join(NOT_EXPORTED))
    failed = [g.path for g in graphs.values() if g.verification and not g.verification["ok"]]
    if failed:
        logger.error("Verification failed for %s", ", ".join(failed))
        raise SystemExit(1)
    return graphs


def cli(argv: Optional[List[str]] = None) -> int:
    """``main`` as a command: bad input is one message and exit status 2, no traceback."""
    from eva_det.errors import exit_on_input_error

    with exit_on_input_error():
        main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
