"""Build hook: copy the config tree into the package (metadata lives in pyproject.toml).

A wheel (``pip install .``, ``python -m build``) gets ``configs/common`` as
``eva_det/model_zoo/configs/common`` and ``projects`` as ``eva_det/model_zoo/configs/projects``,
the way detectron2 ships its configs inside ``detectron2.model_zoo``; the repository folders stay
the single source of truth (:mod:`eva_det.config.paths` finds either). Editable installs
(``pip install -e .``) copy nothing and use the repository folders.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

# repository folder -> folder inside the package
CONFIG_TREE = {
    "configs/common": "eva_det/model_zoo/configs/common",
    "projects": "eva_det/model_zoo/configs/projects",
}


def _config_files(src: str):
    """Config files under ``src`` (python sources and docs; no caches)."""
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".md", ".yaml", ".json")):
                yield os.path.join(folder, name)


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies :data:`CONFIG_TREE` into the build folder."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # editable installs read the repository folders
        here = os.path.dirname(os.path.abspath(__file__))
        for src, dst in CONFIG_TREE.items():
            src_dir = os.path.join(here, src)
            if not os.path.isdir(src_dir):
                raise FileNotFoundError(f"{src_dir} is missing: build from a complete checkout")
            shutil.rmtree(os.path.join(self.build_lib, dst), ignore_errors=True)  # no stale files
            for path in _config_files(src_dir):
                target = os.path.join(self.build_lib, dst, os.path.relpath(path, src_dir))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(path, target)


setup(cmdclass={"build_py": BuildPyWithConfigs})
