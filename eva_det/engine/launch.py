"""Entry point shared by ``tools/lazyconfig_train_net.py``: parse, configure, launch.

Inputs are checked before anything is built (:mod:`eva_det.engine.checks`: override keys,
dataset names and paths); ``run_cli`` prints an :class:`eva_det.errors.InputError` as one message
(exit code 2) instead of a traceback, and with several processes checks once before spawning.
"""

import logging
import os

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from eva_det.errors import InputError

from .checks import check_inputs, explain_dataset_errors, find_config_file, load_config
from .ema import load_checkpoint_for_eval
from .train_loop import build_model, do_test, do_train

__all__ = ["main", "run_cli"]

logger = logging.getLogger(__name__)


def main(args) -> dict:
    """Run training or ``--eval-only`` evaluation for parsed CLI ``args``."""
    import eva_det.data  # noqa: F401  (registers eva_det's datasets in every worker)

    given = args.config_file
    # a repository path (projects/...) from another directory: eva_det's config tree
    args.config_file = find_config_file(given)
    cfg = load_config(args.config_file, args.opts)  # unknown override keys are errors
    check_inputs(cfg, eval_only=args.eval_only)  # dataset names / files, DETECTRON2_DATASETS
    default_setup(cfg, args)
    # eva_det's own INFO logs (progress, load reports) on the console and in log.txt
    setup_logger(
        cfg.train.output_dir,
        comm.get_rank(),
        name="eva_det",
        abbrev_name="eva_det",
        enable_propagation=True,
    )
    if args.config_file != given:
        logger.info(
            "Config %s is not under %s: using eva_det's copy %s",
            given,
            os.getcwd(),
            args.config_file,
        )
    with explain_dataset_errors(cfg, eval_only=args.eval_only):  # unknown category ids
        if args.eval_only:
            model = build_model(cfg)
            model.eval()
            # raw weights, or the checkpoint's EMA with
            # train.model_ema.use_ema_weights_for_eval_only
            load_checkpoint_for_eval(cfg, model)
            return do_test(cfg, model)
        do_train(cfg, resume=args.resume)
    return {}


def run_cli(argv=None) -> None:
    """Parse detectron2's standard arguments and launch ``main`` on every process."""
    args = default_argument_parser().parse_args(argv)
    try:
        if args.num_gpus * args.num_machines > 1:  # fail once, before spawning processes
            import eva_det.data  # noqa: F401

            check_inputs(load_config(args.config_file, args.opts), eval_only=args.eval_only)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except InputError as e:
        logger.error("%s", _message(e))
        raise SystemExit(2) from None


def _message(error: InputError) -> str:
    """The error's message; for one re-raised from a data-loader worker, without the worker's
    traceback that PyTorch puts in front of it."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.rsplit(f"{InputError.__name__}: ", 1)[-1]
    return text
