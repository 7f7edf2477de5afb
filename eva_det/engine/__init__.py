"""Training / evaluation loops and hooks."""

from .ema import EMAHook, EMAState, apply_ema_weights, load_checkpoint_for_eval
from .train_loop import build_model, do_test, do_train, resolve_device

__all__ = [
    "build_model",
    "do_test",
    "do_train",
    "resolve_device",
    "EMAHook",
    "EMAState",
    "apply_ema_weights",
    "load_checkpoint_for_eval",
]
