"""A regular install: eva_det built as a wheel, installed into a folder, used from elsewhere.

The wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation``),
installed with ``pip install --no-deps --target``, and run with ``PYTHONPATH`` = that folder from
a working directory that holds no repository: the model zoo, an evaluation through
``tools/lazyconfig_train_net.py`` with a repository config path, and the console script.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers.shrink import REPO

# builds and installs a wheel in a fresh environment
pytestmark = pytest.mark.slow

SOURCES = ("eva_det", "configs", "projects", "pyproject.toml", "setup.py", "MANIFEST.in")
SOURCES += ("README.md",)  # pyproject's readme
PACKAGED = "eva_det/model_zoo/configs/"


def _run(argv, **kwargs):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, (argv, out.stdout[-3000:], out.stderr[-5000:])
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel file, install folder)."""
    root = tmp_path_factory.mktemp("regular_install")
    src = root / "src"
    for name in SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)])
    (wheel,) = glob.glob(str(root / "dist" / "eva_det-*.whl"))
    _run(pip + ["install", "--no-deps", "--target", str(root / "site"), wheel])
    return wheel, root / "site"


def _repo_configs():
    """Repository config files -> their path inside the package."""
    found = {}
    for src, dst in (("configs/common", "common"), ("projects", "projects")):
        for path in glob.glob(os.path.join(REPO, src, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, os.path.join(REPO, src)).replace(os.sep, "/")
            found[path] = f"{PACKAGED}{dst}/{rel}"
    return found


def test_wheel_ships_the_config_tree(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _repo_configs()
    assert len(expected) > 20
    for path, inside in expected.items():
        assert inside in names, inside
    with zipfile.ZipFile(wheel) as z:  # copies, byte for byte
        for path, inside in expected.items():
            with open(path, "rb") as f:
                assert z.read(inside) == f.read(), inside
    assert not any(n.startswith(("tests/", "tools/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "eva-det-train = eva_det.engine.launch:run_cli" in text


_SCRIPT = """
import json, os, runpy, sys
import eva_det
from detectron2.config import instantiate
from eva_det import model_zoo
from eva_det.config import configs_root
from eva_det.data.datasets.shapes import register_shapes

site, tool, shapes_root, output = sys.argv[1:5]
assert eva_det.__file__.startswith(site), eva_det.__file__
assert str(configs_root()).startswith(site), configs_root()
# relative imports across config folders (o365_to_lvis -> o365_to_coco -> mim_to_coco)
cfg = model_zoo.get_config("eva02_L_lvis_sys_o365")
assert cfg.model.backbone.net.depth == 24 and cfg.dataloader.evaluator.max_dets_per_image == 1000
cfg = model_zoo.get_config("eva_coco_det", overrides=json.loads(os.environ["SHRINK"]))
model = instantiate(cfg.model)  # the model zoo builds its model from the packaged config
print("zoo params", sum(p.numel() for p in model.parameters()))

# the training / evaluation tool, with a repository config path resolved to the packaged copy
register_shapes(root=shapes_root, image_size=128, splits={"shapes_mini_val": ("val", 3)})
sys.argv = [tool] + sys.argv[5:]
runpy.run_path(tool, run_name="__main__")
"""

EVAL_ARGS = [
    "--eval-only",
    "--config-file",
    "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py",
    "dataloader.test.dataset.names=shapes_mini_val",
    "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    "model.backbone.square_pad=128",
    "model.backbone.net.embed_dim=64",
    "model.backbone.net.depth=2",
    "model.backbone.net.window_block_indexes=[0]",
    "model.roi_heads.override_score_thresh=0.0",
]


def test_installed_package_runs_from_another_directory(installed, tmp_path):
    from helpers.shrink import NARROW_HEADS
    from helpers.shrink import zoo_shrink as shrink

    _, site = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output = tmp_path / "out"
    script = tmp_path / "use_installed.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env["SHRINK"] = json.dumps(shrink("eva_coco_det") + NARROW_HEADS)
    tool = os.path.join(REPO, "tools", "lazyconfig_train_net.py")
    args = [str(site), tool, str(tmp_path / "shapes"), str(output)]
    args += EVAL_ARGS + [f"train.output_dir={output}", "train.device=cpu"]
    out = _run([sys.executable, str(script)] + args, cwd=elsewhere, env=env)
    assert "zoo params" in out.stdout
    log = (output / "log.txt").read_text()
    assert "using eva_det's copy" in log and PACKAGED in log.replace(os.sep, "/")
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log  # both tasks were scored
    assert log.count("copypaste: AP,AP50") == 2
    assert (output / "coco_instances_results.json").is_file()
    assert not os.listdir(elsewhere)  # nothing written to the working directory

    # the console script of the wheel
    help_text = _run([str(site / "bin" / "eva-det-train"), "--help"], cwd=elsewhere, env=env)
    assert "--config-file" in help_text.stdout
