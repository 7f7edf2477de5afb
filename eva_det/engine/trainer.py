"""detectron2's SimpleTrainer / AMPTrainer with gradient clipping and a non-finite loss guard.

Each iteration of :class:`EVATrainer` / :class:`EVAAMPTrainer`: forward; **loss check** (every
rank agrees; a NaN / inf loss stops training before ``backward`` with a
:class:`NonFiniteLossError` naming the iteration, every loss term of every rank and the last
complete checkpoint, so no optimizer step ever sees it); backward; hooks' ``after_backward``;
**gradient clipping** (``train.clip_grad``; under AMP the gradients are unscaled first); metrics;
optimizer step. Everything else (state dict, grad scaler, hooks) is detectron2's.

``train.clip_grad`` (``configs/common/train.py``):

* ``enabled`` (bool): clip after every backward;
* ``clip_type`` (str): "norm" = ``torch.nn.utils.clip_grad_norm_`` over all trained parameters
  together (the norm before clipping is logged as ``grad_norm``; a non-finite norm outside AMP
  stops training like a NaN loss), "value" = ``clip_grad_value_`` on every gradient entry;
* ``clip_value`` (float): the max norm, or the max absolute value;
* ``norm_type`` (float): p of the p-norm ("inf" for the max norm).

:func:`create_ddp_model` is detectron2's with the CPU (gloo) case handled: no ``device_ids`` and
no fp16 gradient compression there.
"""

import contextlib
import logging
import math
import os
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from eva_det.errors import InputError
from eva_det.utils.sections import read_section

from .interrupt import sigint_blocked

__all__ = [
    "CLIP_GRAD_DEFAULTS",
    "EVAAMPTrainer",
    "EVATrainer",
    "NonFiniteLossError",
    "build_trainer",
    "clip_grad_config",
    "create_ddp_model",
]

logger = logging.getLogger(__name__)

CLIP_GRAD_DEFAULTS = dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0)


class NonFiniteLossError(FloatingPointError):
    """A loss (or, with clipping, the gradient norm) became NaN / inf; weights are unchanged."""


def clip_grad_config(cfg) -> dict:
    """``cfg.train.clip_grad`` as a validated dict, defaults for absent keys."""
    out = read_section(cfg, "train.clip_grad", CLIP_GRAD_DEFAULTS)
    if out["clip_type"] not in ("norm", "value"):
        raise InputError(f"train.clip_grad.clip_type={out['clip_type']!r}: use 'norm' or 'value'.")
    if not float(out["clip_value"]) > 0:
        raise InputError(f"train.clip_grad.clip_value={out['clip_value']} must be > 0.")
    out["clip_value"], out["norm_type"] = float(out["clip_value"]), float(out["norm_type"])
    return out


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    Same as detectron2's ``create_ddp_model``, except that a model on CPU gets no
    ``device_ids`` (DDP rejects them for CPU modules) and no fp16 gradient compression (a GPU
    bandwidth optimisation that would only change CPU numbers).

    Args:
        model (nn.Module): the model, already on its device.
        fp16_compression (bool): compress gradients to fp16 for the all-reduce (GPU only).
        **kwargs: DistributedDataParallel arguments (``train.ddp``).
    """
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type != "cuda":
        if fp16_compression:
            logger.info("train.ddp.fp16_compression is ignored for a model on CPU.")
        kwargs.setdefault("device_ids", None)
        fp16_compression = False
    return _d2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)


class _GuardedStep:
    """``run_step`` shared by :class:`EVATrainer` and :class:`EVAAMPTrainer`."""

    clip_grad: dict = CLIP_GRAD_DEFAULTS
    checkpoint_dir: str = ""

    def _autocast(self):
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _unscale_gradients(self) -> None:
        pass

    def run_step(self) -> None:
        assert self.model.training, f"[{type(self).__name__}] model was changed to eval mode!"
        start = time.perf_counter()
        if self._data_loader_iter_obj is None:
            # data-loader workers start here: Ctrl-C (sent to the whole process group) must not
            # kill them while StopOnInterrupt finishes the iteration
            with sigint_blocked():
                data = next(self._data_loader_iter)
        else:
            data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self._autocast():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self._check_finite_loss(loss_dict, losses)

        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self._backward(losses)
        self.after_backward()
        if self.clip_grad["enabled"]:
            self._clip_gradients()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self._optimizer_step()

    def _trained_parameters(self) -> List[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _clip_gradients(self) -> None:
        self._unscale_gradients()
        params = self._trained_parameters()
        if self.clip_grad["clip_type"] == "value":
            torch.nn.utils.clip_grad_value_(params, self.clip_grad["clip_value"])
            return
        norm = torch.nn.utils.clip_grad_norm_(
            params, self.clip_grad["clip_value"], norm_type=self.clip_grad["norm_type"]
        )
        norm = float(norm)
        get_event_storage().put_scalar("grad_norm", norm)
        # under AMP an inf norm is the grad scaler's business: it skips the step and rescales
        if not math.isfinite(norm) and not isinstance(self, AMPTrainer):
            raise NonFiniteLossError(
                f"The gradient norm became {norm} at iteration {self.iter} (the losses were "
                f"finite); the optimizer step was not taken. {self._resume_hint()}"
            )

    def _check_finite_loss(self, loss_dict: Dict[str, torch.Tensor], losses: torch.Tensor):
        """Raise NonFiniteLossError on every rank if any rank's total loss is NaN / inf."""
        finite = torch.isfinite(losses.detach()).float().reshape(1)
        if comm.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite.item()):
            return
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        per_rank = comm.all_gather(values) if comm.get_world_size() > 1 else [values]
        lines = []
        for rank, terms in enumerate(per_rank):
            total = sum(terms.values())
            listed = ", ".join(f"{k}={v:.6g}" for k, v in terms.items())
            prefix = f"rank {rank}: " if len(per_rank) > 1 else ""
            lines.append(f"{prefix}total_loss={total:.6g} ({listed})")
        raise NonFiniteLossError(
            f"Non-finite loss at iteration {self.iter}:\n  "
            + "\n  ".join(lines)
            + "\nTraining stopped before backward: no optimizer step used this loss and no "
            f"checkpoint holds its effect. {self._resume_hint()}"
        )

    def _resume_hint(self) -> str:
        last = ""
        tag = os.path.join(self.checkpoint_dir, "last_checkpoint") if self.checkpoint_dir else ""
        if tag and os.path.isfile(tag):
            with open(tag) as f:
                last = os.path.join(self.checkpoint_dir, f.read().strip())
        where = (
            f"The last complete checkpoint is {last}: rerun the same command with --resume to "
            "continue from it"
            if last
            else "No checkpoint was saved yet: rerun from train.init_checkpoint"
        )
        return (
            f"{where}, after enabling gradient clipping (train.clip_grad.enabled=True) or "
            "lowering optimizer.lr."
        )


class EVATrainer(_GuardedStep, SimpleTrainer):
    """``SimpleTrainer`` with the loss guard and ``train.clip_grad`` (module docstring)."""

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        clip_grad=None,
        checkpoint_dir="",
        cpu_autocast_dtype: Optional[torch.dtype] = None,
        **kwargs,
    ):
        """
        Args:
            model, data_loader, optimizer, **kwargs: as for detectron2's ``SimpleTrainer``
                (``gather_metric_period``, ``zero_grad_before_forward``, ...).
            clip_grad (dict or None): ``train.clip_grad`` settings (see
                :func:`clip_grad_config`); None = no clipping.
            checkpoint_dir (str): where ``last_checkpoint`` lives (named in loss errors).
            cpu_autocast_dtype (torch.dtype or None): run the forward pass under
                ``torch.autocast("cpu", dtype)`` (``train.amp.cpu_dtype``: bfloat16, which
                needs no gradient scaling); None = float32.
        """
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.clip_grad = {**CLIP_GRAD_DEFAULTS, **(clip_grad or {})}
        self.checkpoint_dir = checkpoint_dir
        self.cpu_autocast_dtype = cpu_autocast_dtype

    def _autocast(self):
        if self.cpu_autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.cpu_autocast_dtype)


class EVAAMPTrainer(_GuardedStep, AMPTrainer):
    """``AMPTrainer`` with the loss guard and ``train.clip_grad`` (gradients unscaled first)."""

    def __init__(self, model, data_loader, optimizer, *, clip_grad=None, checkpoint_dir="", **kw):
        """
        Args:
            model, data_loader, optimizer, **kw: as for detectron2's ``AMPTrainer``
                (``grad_scaler``, ``precision``, ...).
            clip_grad, checkpoint_dir: as for :class:`EVATrainer`.
        """
        super().__init__(model, data_loader, optimizer, **kw)
        self.clip_grad = {**CLIP_GRAD_DEFAULTS, **(clip_grad or {})}
        self.checkpoint_dir = checkpoint_dir

    def _autocast(self):
        assert torch.cuda.is_available(), "[EVAAMPTrainer] CUDA is required for AMP training!"
        return torch.autocast("cuda", dtype=self.precision)

    def _backward(self, losses: torch.Tensor) -> None:
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())

    def _unscale_gradients(self) -> None:
        self.grad_scaler.unscale_(self.optimizer)

    def _optimizer_step(self) -> None:
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


def build_trainer(cfg, model, data_loader, optimizer, use_amp: bool, cpu_autocast_dtype=None):
    """The trainer for ``cfg``: :class:`EVAAMPTrainer` if ``use_amp`` (CUDA) else
    :class:`EVATrainer` (float32, or CPU autocast in ``cpu_autocast_dtype``)."""
    kwargs = dict(clip_grad=clip_grad_config(cfg), checkpoint_dir=cfg.train.output_dir)
    if kwargs["clip_grad"]["enabled"]:
        logger.info("Gradient clipping: %s", kwargs["clip_grad"])
    if use_amp:
        return EVAAMPTrainer(model, data_loader, optimizer, **kwargs)
    return EVATrainer(
        model, data_loader, optimizer, cpu_autocast_dtype=cpu_autocast_dtype, **kwargs
    )
