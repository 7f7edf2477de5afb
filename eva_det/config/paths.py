"""Find eva_det's config tree: the repository's ``configs/`` and ``projects/`` folders.

Two places hold it:

* a source checkout (editable install, ``pip install -e .``): the folders next to ``eva_det/``;
* an installed package (wheel, ``pip install .``): ``eva_det/model_zoo/configs/``, a copy made at
  build time by ``setup.py`` (``configs/common`` -> ``model_zoo/configs/common``,
  ``projects`` -> ``model_zoo/configs/projects``), as detectron2 ships its configs inside
  ``detectron2.model_zoo``.

The repository folders are the single source of truth; the packaged copy is used when present.
Config paths are written as in the repository: ``common/...`` (under ``configs/``; a leading
``configs/`` is accepted too) or ``projects/...``. Relative imports between config files
(``from ..COCO.x import ...``) work in both places because the layout is the same.
"""

import logging
import os
from pathlib import Path

from detectron2.config import LazyConfig

__all__ = [
    "repo_root",
    "packaged_configs_root",
    "configs_root",
    "config_file",
    "get_config",
    "resolve_config_file",
]

logger = logging.getLogger(__name__)


def repo_root() -> Path:
    """The checkout that holds ``eva_det/``, ``configs/`` and ``projects/`` (editable install)."""
    return Path(__file__).resolve().parents[2]


def packaged_configs_root() -> Path:
    """Where a built package keeps its copy of the config tree (absent in a checkout)."""
    return Path(__file__).resolve().parents[1] / "model_zoo" / "configs"


def configs_root() -> Path:
    """The folder holding ``common/`` (the repository's ``configs/`` or the packaged copy).

    Raises:
        FileNotFoundError: neither exists (an install built without its config tree).
    """
    packaged = packaged_configs_root()
    if (packaged / "common").is_dir():
        return packaged
    checkout = repo_root() / "configs"
    if (checkout / "common").is_dir():
        return checkout
    raise FileNotFoundError(
        f"eva_det's config tree is missing: neither {packaged} (installed package) nor "
        f"{checkout} (source checkout) exists. Reinstall eva_det from its repository "
        "(pip install . or bash tools/install.sh), which copies configs/ and projects/ in."
    )


def _projects_parent() -> Path:
    root = configs_root()
    return root if root == packaged_configs_root() else repo_root()


def config_file(relpath: str) -> Path:
    """The file of a config given by its repository path.

    Args:
        relpath (str): ``common/...`` or ``configs/common/...`` (shared building blocks), or
            ``projects/...`` (recipes), e.g. ``projects/ViTDet/configs/COCO/x.py``.

    Raises:
        FileNotFoundError: no such config; the message names the path and where it was looked.
    """
    rel = Path(relpath).as_posix()
    if rel.startswith("configs/"):
        rel = rel[len("configs/") :]
    root = _projects_parent() if rel.startswith("projects/") else configs_root()
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"eva_det config {relpath!r} not found at {path}. Config names are repository "
            "paths such as 'common/train.py' or 'projects/ViTDet/configs/COCO/"
            "cascade_mask_rcnn_vitdet_eva.py'."
        )
    return path


def get_config(relpath: str):
    """Load a shared building block, e.g. ``get_config("common/train.py").train``.

    Args:
        relpath (str): see :func:`config_file`.
    """
    return LazyConfig.load(os.fspath(config_file(relpath)))


def resolve_config_file(path: str) -> str:
    """``path`` if it is a file, else the config tree's file of that repository path.

    Lets ``--config-file projects/ViTDet/configs/...`` work from any working directory with an
    installed package; an existing file always wins.

    Raises:
        FileNotFoundError: neither exists.
    """
    if os.path.isfile(path) or os.path.isabs(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file {path} does not exist.")
        return path
    found = os.fspath(config_file(path))
    logger.info("Config %s is not under %s: using eva_det's copy %s", path, os.getcwd(), found)
    return found
