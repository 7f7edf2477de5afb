"""Ctrl-C during training: finish the iteration, save a checkpoint, stop with the resume command.

:class:`StopOnInterrupt` runs after the checkpoint and evaluation hooks, before the writers.
While training runs it replaces Python's SIGINT handler: the first Ctrl-C only sets a flag;
after the iteration in progress (and any checkpoint or evaluation hooks of that iteration) every
process agrees to stop, the main process saves ``model_<iteration>.pth`` (atomically, tagged
in ``last_checkpoint``) and :class:`TrainingInterrupted` is raised with a message naming the
checkpoint and the exact ``--resume`` command. A second Ctrl-C stops at once (the last complete
checkpoint stays the newest one). The CLI (:mod:`eva_det.engine.launch`) logs the message and
exits with status 130.

Data-loader workers are started with SIGINT blocked (:func:`sigint_blocked`), so that a Ctrl-C
in a terminal, which reaches the whole process group, does not kill them under the iteration
that is being finished.
"""

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from typing import Iterator, List, Optional

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StopOnInterrupt", "TrainingInterrupted", "resume_command", "sigint_blocked"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``str()`` says where it stopped and how to continue.

    A ``KeyboardInterrupt``: code that cleans up on Ctrl-C still does, and detectron2's trainer
    does not log it as a crash.
    """


def resume_command(argv: Optional[List[str]] = None) -> str:
    """The command line that continues this run: the same one with ``--resume`` added.

    Args:
        argv (list[str] or None): the arguments after the script name (None: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args = ["--resume"] + args  # options go before the key=value overrides
    return shlex.join([os.path.basename(sys.executable), sys.argv[0]] + args)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread; processes forked meanwhile inherit the blocked mask."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class StopOnInterrupt(HookBase):
    """Stop training cleanly on Ctrl-C (module docstring).

    Args:
        checkpointer: the run's checkpointer (``save(name, iteration=...)`` and ``save_dir``).
        resume_hint (str): the command that continues the run (:func:`resume_command`).
    """

    def __init__(self, checkpointer, resume_hint: str):
        self.checkpointer = checkpointer
        self.resume_hint = resume_hint
        self.requested = False
        self._previous_handler = None

    def before_train(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def after_train(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:  # second Ctrl-C: stop now, without a new checkpoint
            raise TrainingInterrupted(
                f"Training stopped at once (second Ctrl-C) during iteration {self.trainer.iter}; "
                f"no checkpoint was written for it. {self._continue_from(self._last_checkpoint())}"
            )
        self.requested = True
        logger.warning(
            "Ctrl-C: stopping after iteration %d, once it is complete and saved. Press Ctrl-C "
            "again to stop at once.",
            self.trainer.iter,
        )

    def after_step(self) -> None:
        if not self._everyone_requested():
            return
        iteration = self.trainer.iter
        path = self._last_checkpoint()
        name = f"model_{iteration:07d}"
        if comm.is_main_process() and os.path.basename(path) != f"{name}.pth":
            self.checkpointer.save(name, iteration=iteration)
            path = self._last_checkpoint()
        comm.synchronize()  # the checkpoint is complete before any process exits
        raise TrainingInterrupted(
            f"Training stopped by Ctrl-C after iteration {iteration} (of "
            f"{self.trainer.max_iter}). {self._continue_from(path)}"
        )

    def _everyone_requested(self) -> bool:
        if comm.get_world_size() == 1:
            return self.requested
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # stop together, at the same iteration
        self.requested = bool(flag.item())
        return self.requested

    def _last_checkpoint(self) -> str:
        tag = os.path.join(self.checkpointer.save_dir, "last_checkpoint")
        if not os.path.isfile(tag):
            return ""
        with open(tag) as f:
            return os.path.join(self.checkpointer.save_dir, f.read().strip())

    def _continue_from(self, path: str) -> str:
        if not path:
            return "No checkpoint was saved yet: rerun the same command to start again."
        return (
            f"The last complete checkpoint is {path}. To continue from it, run:\n"
            f"  {self.resume_hint}"
        )
