"""The one exception type for bad user input (config, dataset, checkpoint, environment).

An :class:`InputError` message names the file, key or value that is wrong and what to do about
it; ``tools/lazyconfig_train_net.py`` prints it without a traceback. Every message is listed in
``docs/TROUBLESHOOTING.md``.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input that the user has to fix; the message says what is wrong and how to fix it."""
