"""Exponential moving average (EMA) of model weights, as EVA-02's detection training keeps it.

Config keys (``train.model_ema.*``, names and meaning of the official EVA-02 code):

* ``enabled`` (bool): keep an EMA during training, evaluate with it, save it in checkpoints;
* ``decay`` (float): ``ema = decay * ema + (1 - decay) * weight`` after every iteration;
* ``device`` (str): where the averaged tensors live ("" = next to each model tensor);
* ``use_ema_weights_for_eval_only`` (bool): with ``enabled`` too, ``--eval-only`` evaluates the
  EMA weights stored in the checkpoint instead of its raw ``"model"`` weights.

Semantics kept from the official code so that its checkpoints load and behave the same:

* every parameter *and* buffer of the (DDP-unwrapped) model is averaged, keyed by the names of
  ``named_parameters()`` then ``named_buffers()``;
* the update runs in the hook's ``after_step``, i.e. after the optimizer step of each iteration;
  the EMA starts as a copy of the weights at the start of training (after ``init_checkpoint``
  or ``--resume`` loaded them), with no warm-up of the decay;
* checkpoints carry it as the checkpointable ``"ema_state"`` (a flat ``{name: tensor}`` dict)
  next to ``"model"``; ``--resume`` restores it, a plain ``init_checkpoint`` load does not (the
  EMA then restarts from the loaded weights);
* periodic evaluation runs on the raw weights and again on the EMA weights.

One deliberate difference: non-floating tensors (integer buffers) are copied, not averaged (the
official update would average them in floating point and truncate the result back to integers).
"""

import logging
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import torch
from detectron2.engine import HookBase
from torch import nn

from eva_det.checkpoint.checkpointer import EVACheckpointer, checkpoint_options
from eva_det.utils.modules import unwrap_ddp
from eva_det.utils.sections import read_section

__all__ = [
    "EMA_DEFAULTS",
    "EMAState",
    "EMAHook",
    "ema_config",
    "build_model_ema",
    "apply_ema_weights",
    "load_checkpoint_for_eval",
]

logger = logging.getLogger(__name__)

#: Checkpointable name of the EMA in checkpoints (official name).
EMA_KEY = "ema_state"

#: Defaults of ``train.model_ema`` (the official values; ``configs/common/train.py`` uses them).
EMA_DEFAULTS = dict(enabled=False, decay=0.9999, device="", use_ema_weights_for_eval_only=False)


def _named_tensors(model: nn.Module) -> Iterator[Tuple[str, torch.Tensor]]:
    """Parameters then buffers of the DDP-unwrapped ``model`` (shared tensors listed once)."""
    model = unwrap_ddp(model)
    yield from model.named_parameters()
    yield from model.named_buffers()


class EMAState:
    """Averaged copies of a model's parameters and buffers, keyed by their names.

    A checkpointable (``state_dict`` / ``load_state_dict``) holding ``state``: ``{name: tensor}``
    with each tensor shaped like the model tensor of that name.
    """

    def __init__(self):
        self.state: Dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"EMAState({len(self.state)} tensors, device={self.device})"

    def has_state(self) -> bool:
        return bool(self.state)

    @property
    def device(self) -> Optional[torch.device]:
        """Device of the first stored tensor (None when empty)."""
        return next(iter(self.state.values())).device if self.state else None

    def save_from(self, model: nn.Module, device: str = "") -> None:
        """Replace the state by detached copies of ``model``'s tensors.

        Args:
            model (nn.Module): the model (DDP is unwrapped).
            device (str): where to store the copies; "" keeps each tensor's device.
        """
        self.state = {
            name: t.detach().clone().to(device) if device else t.detach().clone()
            for name, t in _named_tensors(model)
        }

    def to(self, device: str) -> "EMAState":
        """Move the stored tensors to ``device`` (no-op for "")."""
        if device:
            self.state = {k: v.to(device) for k, v in self.state.items()}
        return self

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * value`` for every floating tensor of ``model``.

        Non-floating tensors are copied. Values are moved to the EMA's device first.

        Args:
            model (nn.Module): the model being trained (DDP is unwrapped).
            decay (float): weight of the old average, in [0, 1].
        """
        groups: Dict[Tuple[torch.device, torch.dtype], Tuple[list, list]] = {}
        for name, value in _named_tensors(model):
            ema = self.state.get(name)
            if ema is None:
                raise KeyError(
                    f"EMA state has no entry {name!r}: it was saved from another model. Start the "
                    "EMA afresh (train without --resume) or load a checkpoint of this model."
                )
            value = value.detach().to(ema.device)
            if ema.is_floating_point():
                lists = groups.setdefault((ema.device, ema.dtype), ([], []))
                lists[0].append(ema)
                lists[1].append(value.to(ema.dtype))
            else:
                ema.copy_(value)
        for emas, values in groups.values():
            torch._foreach_mul_(emas, decay)
            torch._foreach_add_(emas, values, alpha=1.0 - decay)

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Copy the stored tensors into ``model`` in place.

        Every parameter must have an entry. A buffer without one keeps its value (logged): the
        official EVA-02 model, for example, stores RoPE tables as buffers under other names,
        and non-persistent buffers (pixel mean, anchors) are constants anyway. Entries the model
        lacks are ignored (logged).

        Raises:
            KeyError: if parameters are missing; the message lists some of them.
        """
        model = unwrap_ddp(model)
        param_names = {n for n, _ in model.named_parameters()}
        missing_params, missing_buffers, used = [], [], set()
        for name, target in _named_tensors(model):
            src = self.state.get(name)
            if src is None:
                (missing_params if name in param_names else missing_buffers).append(name)
                continue
            if src.shape != target.shape:
                raise ValueError(
                    f"EMA entry {name!r} has shape {tuple(src.shape)}, the model's "
                    f"{tuple(target.shape)}: the EMA was saved from another model"
                )
            target.copy_(src)
            used.add(name)
        if missing_params:
            raise KeyError(
                f"EMA state lacks {len(missing_params)} of the model's parameters (e.g. "
                f"{missing_params[:5]}): it belongs to another model"
            )
        if missing_buffers:
            logger.info(
                "EMA state has no entry for buffers %s; they keep their values.", missing_buffers
            )
        unused = [k for k in self.state if k not in used]
        if unused:
            logger.info("EMA entries the model does not have were ignored: %s", unused[:10])

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Take over ``state_dict`` (``{name: tensor}``; tensors are not copied)."""
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"'{EMA_KEY}' entries must be tensors; {bad[:5]} are not")
        self.state = dict(state_dict)


@contextmanager
def apply_ema_weights(model: nn.Module, ema: EMAState):
    """Run the body with ``ema``'s weights in ``model``, then put the raw weights back.

    The raw weights are saved on the EMA's device and restored even if the body raises.

    Args:
        model (nn.Module): the model (DDP is unwrapped).
        ema (EMAState): a non-empty EMA of that model.
    """
    if not ema.has_state():
        raise RuntimeError("apply_ema_weights: the EMA state is empty (the EMA hook never ran)")
    raw = EMAState()
    raw.save_from(model, str(ema.device))
    ema.apply_to(model)
    try:
        yield model
    finally:
        raw.apply_to(model)


class EMAHook(HookBase):
    """Keeps an :class:`EMAState` of the trainer's model, updated after every iteration.

    Register it before the checkpointing and evaluation hooks, so that a checkpoint or an
    evaluation at iteration ``i`` sees the EMA including step ``i``.
    """

    def __init__(self, model: nn.Module, ema: EMAState, decay: float, device: str = ""):
        """
        Args:
            model (nn.Module): the trained model (DDP is unwrapped).
            ema (EMAState): the EMA to maintain; if it already holds a state (``--resume``), that
                state is continued, otherwise it starts as a copy of the weights.
            decay (float): ``train.model_ema.decay``.
            device (str): ``train.model_ema.device``; "" keeps each tensor's device.
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"train.model_ema.decay must be in [0, 1], got {decay}")
        self.model = unwrap_ddp(model)
        self.ema = ema
        self.decay = float(decay)
        self.device = device

    @classmethod
    def from_config(cls, cfg, model: nn.Module, ema: EMAState) -> "EMAHook":
        """The hook for ``train.model_ema.{decay,device}`` of ``cfg``."""
        settings = ema_config(cfg)
        return cls(model, ema, settings["decay"], settings["device"])

    def before_train(self) -> None:
        if self.ema.has_state():
            logger.info("Continuing the EMA of weights loaded from the checkpoint.")
            self.ema.to(self.device)
        else:
            logger.info("Starting the EMA of weights (decay %g).", self.decay)
            self.ema.save_from(self.model, self.device)

    def after_step(self) -> None:
        self.ema.update(self.model, self.decay)


def _resolve_ema_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "train.model_ema.device=%s but CUDA is not available: keeping the EMA "
            "next to the model",
            device,
        )
        return ""
    return device


def ema_config(cfg) -> dict:
    """``cfg.train.model_ema`` as a plain dict, with the official defaults for absent keys.

    ``device`` is "" when it names CUDA on a machine without it.

    Raises:
        InputError: an unknown ``train.model_ema`` key.
    """
    out = read_section(cfg, "train.model_ema", EMA_DEFAULTS)
    out["device"] = _resolve_ema_device(str(out["device"] or ""))
    return out


def build_model_ema(cfg) -> Optional[EMAState]:
    """An empty :class:`EMAState` if ``train.model_ema.enabled``, else None."""
    settings = ema_config(cfg)
    if not settings["enabled"]:
        return None
    logger.info("Using an EMA of the model weights: %s", settings)
    return EMAState()


def load_checkpoint_for_eval(cfg, model: nn.Module) -> None:
    """Load ``cfg.train.init_checkpoint`` into ``model`` for ``--eval-only``.

    With ``train.model_ema.enabled`` and ``use_ema_weights_for_eval_only`` the checkpoint's
    ``"ema_state"`` replaces its ``"model"`` weights (as the official EVA-02 script does).

    The checkpoint must fit the model exactly (:mod:`eva_det.checkpoint.fit`) unless
    ``train.allow_checkpoint_mismatch``; it is read safely unless
    ``train.unsafe_load_executes_code`` (:mod:`eva_det.checkpoint.safe_load`).

    Raises:
        KeyError: the EMA weights were asked for but the checkpoint has none.
        InputError: the checkpoint does not fit the model, or cannot be read safely.
    """
    settings = ema_config(cfg)
    path = cfg.train.init_checkpoint
    use_ema = settings["enabled"] and settings["use_ema_weights_for_eval_only"]
    if settings["use_ema_weights_for_eval_only"] and not settings["enabled"]:
        logger.warning(
            "train.model_ema.use_ema_weights_for_eval_only=True is ignored because "
            "train.model_ema.enabled=False (as in the official code): evaluating the raw weights. "
            "Add train.model_ema.enabled=True to evaluate the EMA weights."
        )
    options = checkpoint_options(cfg)
    if not use_ema:
        EVACheckpointer(model, **options).load_for_eval(path)
        return
    ema = EMAState()
    EVACheckpointer(model, **options, **{EMA_KEY: ema}).load_for_eval(path)
    if not ema.has_state():
        what = "is empty: no checkpoint" if not path else f"has no '{EMA_KEY}'"
        raise KeyError(
            f"train.init_checkpoint={path!r} {what} to take EMA weights from (EMA weights exist "
            "only in checkpoints trained with train.model_ema.enabled=True). Set "
            "train.model_ema.use_ema_weights_for_eval_only=False to evaluate raw weights."
        )
    ema.apply_to(model)
    logger.info("Evaluating the EMA weights of %s.", path)
