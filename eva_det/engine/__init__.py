"""Training / evaluation loops and hooks."""

from .train_loop import build_model, do_test, do_train, resolve_device

__all__ = ["build_model", "do_test", "do_train", "resolve_device"]
