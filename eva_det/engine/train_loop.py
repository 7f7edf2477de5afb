"""Training and evaluation for LazyConfig models (what ``tools/lazyconfig_train_net.py`` runs).

Follows detectron2's ``tools/lazyconfig_train_net.py``: ``do_train`` builds model, optimizer,
loader and hooks (timer, lr schedule, periodic checkpoints, evaluation, metrics.json /
TensorBoard / console writers with ETA, and at the end the pictures of
:mod:`eva_det.engine.pictures`); ``do_test`` runs ``inference_on_dataset``.
"""

import logging
import time
from typing import Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import print_csv_format
from detectron2.utils import comm

from eva_det.checkpoint.checkpointer import EVACheckpointer, checkpoint_options
from eva_det.data.resumable_loader import build_resumable_train_loader
from eva_det.errors import InputError
from eva_det.evaluation.inference import inference_on_dataset  # progress bar, batched paste

from .build import InferenceModel, build_model
from .ema import EMA_KEY, EMAHook, EMAState, apply_ema_weights, build_model_ema
from .interrupt import StopOnInterrupt, resume_command
from .pictures import PicturesHook, pictures_config
from .trainer import build_trainer, create_ddp_model

__all__ = ["do_test", "do_train"]

logger = logging.getLogger(__name__)


def do_test(cfg, model, ema_state: Optional[EMAState] = None) -> Optional[dict]:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    The model runs as :class:`eva_det.engine.build.InferenceModel` wraps it: test-time
    augmentation with ``test.aug.enabled``, ``test.amp`` / ``test.compile_backbone``. With
    ``ema_state`` (training with ``train.model_ema.enabled``) it is evaluated again with the EMA
    weights swapped in; those results come back under the key ``"ema"`` (e.g. ``ema/bbox/AP``
    in metrics.json).
    """
    if "evaluator" not in cfg.dataloader:
        return None
    eval_model = InferenceModel(cfg, model)

    def evaluate() -> dict:
        start = time.perf_counter()
        loader = instantiate(cfg.dataloader.test)
        evaluator = instantiate(cfg.dataloader.evaluator)
        with eval_model.precision():  # test.amp, test.compile_backbone
            results = inference_on_dataset(eval_model.model, loader, evaluator)
        # parsed by bench/shapes_main_job.py
        logger.info("Evaluation took %.2f s (inference and scoring)", time.perf_counter() - start)
        if comm.is_main_process() and results:
            print_csv_format(results)
        return results

    results = evaluate()
    if ema_state is not None:
        logger.info("Evaluating the EMA weights.")
        with apply_ema_weights(model, ema_state):
            ema_results = evaluate()
        if ema_results:
            results = {**(results or {}), "ema": ema_results}
    return results


def cpu_autocast_dtype(cfg):
    """``train.amp.cpu_dtype``: None (float32 on CPU, the default) or ``"bfloat16"``.

    Raises:
        InputError: for any other value (float16 on CPU would need gradient scaling).
    """
    value = cfg.train.amp.get("cpu_dtype", None)
    if value is None or value == "None":
        return None
    if value != "bfloat16":
        raise InputError(
            f"train.amp.cpu_dtype={value!r}: CPU training supports None (float32) or "
            f'"bfloat16" (autocast without gradient scaling).'
        )
    return torch.bfloat16


def do_train(cfg, resume: bool = False, resume_hint: Optional[str] = None) -> None:
    """Train ``cfg.model`` for ``cfg.train.max_iter`` iterations with periodic eval/checkpoints.

    Ctrl-C stops after the iteration in progress with a checkpoint
    (:class:`eva_det.engine.interrupt.StopOnInterrupt`) and raises
    :class:`~eva_det.engine.interrupt.TrainingInterrupted`.

    Args:
        cfg: the LazyConfig.
        resume (bool): continue from the last checkpoint in ``train.output_dir``.
        resume_hint (str or None): the command that continues this run, named when Ctrl-C stops
            it; None: this process's command line with ``--resume`` added.
    """
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    # checkpointable: --resume continues the sampler stream where the checkpoint left it
    train_loader = build_resumable_train_loader(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    ema_state = build_model_ema(cfg)  # None unless train.model_ema.enabled

    use_amp, cpu_dtype = bool(cfg.train.amp.enabled), None
    if use_amp and cfg.train.device == "cpu":
        cpu_dtype = cpu_autocast_dtype(cfg)
        if cpu_dtype is None:
            logger.warning(
                "train.amp.enabled=True has no effect on CPU unless train.amp.cpu_dtype="
                "bfloat16: training in fp32"
            )
        else:
            logger.info("Training on CPU under torch.autocast(dtype=%s)", cpu_dtype)
        use_amp = False
    # NaN / inf loss guard before backward; train.clip_grad
    trainer = build_trainer(cfg, model, train_loader, optim, use_amp, cpu_dtype)
    checkpointer = EVACheckpointer(
        model,
        cfg.train.output_dir,
        **checkpoint_options(cfg),
        trainer=trainer,
        data_loader=train_loader,
    )
    if ema_state is not None:  # saved with every checkpoint, restored by --resume
        checkpointer.add_checkpointable(EMA_KEY, ema_state)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            # updates after each optimizer step, before checkpoints / evaluation see it
            EMAHook.from_config(cfg, model, ema_state) if ema_state is not None else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model, ema_state)),
            # after the iteration's checkpoint / evaluation hooks; before the writer, whose
            # after_train then logs the last iteration (writing it twice divides by zero in
            # detectron2's ETA estimate during the first iterations)
            StopOnInterrupt(checkpointer, resume_hint or resume_command()),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
            # after the final evaluation and metrics.json flush: predictions.png, losses.png
            PicturesHook(cfg, model) if pictures_config(cfg)["enabled"] else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    train_loader.resume_at_iteration(start_iter)
    trainer.train(start_iter, cfg.train.max_iter)
