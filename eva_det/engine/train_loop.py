"""Training and evaluation for LazyConfig models (what ``tools/lazyconfig_train_net.py`` runs).

Follows detectron2's ``tools/lazyconfig_train_net.py``: ``do_train`` builds model, optimizer,
loader and hooks (timer, lr schedule, periodic checkpoints, evaluation, metrics.json /
TensorBoard / console writers with ETA); ``do_test`` runs ``inference_on_dataset``.
"""

import logging
from typing import Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from eva_det.checkpoint.checkpointer import EVACheckpointer

__all__ = ["resolve_device", "build_model", "do_test", "do_train"]

logger = logging.getLogger(__name__)


def resolve_device(cfg) -> str:
    """``cfg.train.device``, falling back to CPU (with a warning) when CUDA is unavailable."""
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("train.device=%s but CUDA is not available: running on CPU", device)
        device = "cpu"
    cfg.train.device = device
    return device


def build_model(cfg) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on the configured device."""
    model = instantiate(cfg.model)
    model.to(resolve_device(cfg))
    return model


def do_test(cfg, model) -> Optional[dict]:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``."""
    if "evaluator" not in cfg.dataloader:
        return None
    loader = instantiate(cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    results = inference_on_dataset(model, loader, evaluator)
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def do_train(cfg, resume: bool = False) -> None:
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations with periodic eval/checkpoints."""
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)

    use_amp = bool(cfg.train.amp.enabled)
    if use_amp and cfg.train.device == "cpu":
        logger.warning("train.amp.enabled=True has no effect on CPU: training in fp32")
        use_amp = False
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, train_loader, optim)
    checkpointer = EVACheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
