"""Entry point shared by ``tools/lazyconfig_train_net.py``: parse, configure, launch."""

import logging

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup, launch

from .ema import load_checkpoint_for_eval
from .train_loop import build_model, do_test, do_train

__all__ = ["main", "run_cli"]

logger = logging.getLogger(__name__)


def main(args) -> dict:
    """Run training or ``--eval-only`` evaluation for parsed CLI ``args``."""
    import eva_det.data  # noqa: F401  (registers eva_det's datasets in every worker)

    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    if args.eval_only:
        model = build_model(cfg)
        model.eval()
        # raw weights, or the checkpoint's EMA with train.model_ema.use_ema_weights_for_eval_only
        load_checkpoint_for_eval(cfg, model)
        return do_test(cfg, model)
    do_train(cfg, resume=args.resume)
    return {}


def run_cli(argv=None) -> None:
    """Parse detectron2's standard arguments and launch ``main`` on every process."""
    args = default_argument_parser().parse_args(argv)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
