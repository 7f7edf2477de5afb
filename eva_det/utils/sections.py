"""Config sections (``train.model_ema``, ``test.amp`` ...) read over defaults defined in code.

Each section's defaults live in the module that uses it, so that a config without the section
works and an installed package needs no config file for them. A key that the defaults do not
know is a misspelling: :func:`read_section` raises an :class:`~eva_det.errors.InputError` that
names it.
"""

import copy
from typing import Any, Mapping

from eva_det.errors import InputError

__all__ = ["read_section"]


def _plain(node: Any) -> Any:
    """``node`` as plain python containers (omegaconf nodes resolved), else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def read_section(cfg, key: str, defaults: Mapping[str, Any]) -> dict:
    """``cfg.<key>`` as a plain dict, with ``defaults`` for absent keys.

    Args:
        cfg: a LazyConfig (or nested dicts).
        key (str): the section's dotted name, e.g. "train.model_ema"; a missing or None
            section (or parent) gives the defaults.
        defaults (Mapping): every known key with its default value (deep-copied).

    Returns:
        dict: the defaults updated with the section's values (resolved).

    Raises:
        InputError: the section has keys that ``defaults`` does not know (the message names
            them and the known ones).
    """
    node = cfg
    for part in key.split("."):
        node = node.get(part, None) if node is not None else None
    given = dict(_plain(node) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(
            f"Unknown {key} keys {unknown}; known: {sorted(defaults)}. Fix the spelling in the "
            "config or in the key=value override."
        )
    return {**copy.deepcopy(dict(defaults)), **given}
