"""Training / evaluation loops and hooks."""

from .build import InferenceModel, build_inference_model, build_model, resolve_device
from .ema import EMAHook, EMAState, apply_ema_weights, load_checkpoint_for_eval
from .train_loop import do_test, do_train

__all__ = [
    "InferenceModel",
    "build_inference_model",
    "build_model",
    "do_test",
    "do_train",
    "resolve_device",
    "EMAHook",
    "EMAState",
    "apply_ema_weights",
    "load_checkpoint_for_eval",
]
