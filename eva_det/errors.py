"""The one exception type for bad user input, and how every tool reports it.

An :class:`InputError` message names the file, key or value that is wrong and what to do about
it. Every tool (``tools/*.py``) runs its work under :func:`exit_on_input_error`, which logs
such a message once, without a traceback, and exits with :data:`EXIT_BAD_INPUT` (2). Every
message is listed in ``docs/TROUBLESHOOTING.md``.
"""

import contextlib
import logging
from typing import Iterator, Optional

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "InputError",
    "exit_on_input_error",
    "input_error_message",
]

#: Exit status of a tool stopped by bad input.
EXIT_BAD_INPUT = 2
#: Exit status of a tool stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class InputError(ValueError):
    """Bad input that the user has to fix; the message says what is wrong and how to fix it."""


def input_error_message(error: BaseException) -> str:
    """The error's message; for one re-raised from a data-loader worker, without the worker's
    traceback that PyTorch puts in front of it."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.rsplit(f"{InputError.__name__}: ", 1)[-1]
    return text.strip()


@contextlib.contextmanager
def exit_on_input_error(logger: Optional[logging.Logger] = None) -> Iterator[None]:
    """Turn an :class:`InputError` raised inside into one logged message and exit status 2.

    Args:
        logger (logging.Logger or None): where the message goes (ERROR level); None: the
            ``eva_det`` logger (a handler is added if logging is not configured yet).

    Raises:
        SystemExit: with code :data:`EXIT_BAD_INPUT`, chained to nothing (no traceback).
    """
    try:
        yield
    except InputError as e:
        logger = logger or logging.getLogger("eva_det")
        if not logger.hasHandlers():
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logger.error("%s", input_error_message(e))
        raise SystemExit(EXIT_BAD_INPUT) from None
