"""Safe loading: weights_only=True everywhere, official extras allowed by name, the rest refused."""

import argparse
import collections
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.shrink import REPO

from eva_det.checkpoint import convert_file
from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.checkpoint.safe_load import load_checkpoint_file
from eva_det.errors import InputError


def _touch(path):
    """Run by unpickling a :class:`_Executes`: proves the file's code ran."""
    with open(path, "w") as f:
        f.write("executed")
    return path


class _Executes:
    """Pickles as a call of :func:`_touch` (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)


def _official_extras():
    """What official EVA files pickle next to their weights (training args, numpy values)."""
    return {
        "args": argparse.Namespace(model="eva_g_patch14", lr=np.float64(1e-3), input_size=224),
        "epoch": np.int64(29),
        "best": np.float32(0.5),
        "history": np.arange(3, dtype=np.float64),
        "order": collections.OrderedDict(a=1),
    }


def test_official_extras_load_with_weights_only(tmp_path):
    path = str(tmp_path / "official.pth")
    state = _Toy().state_dict()
    torch.save({"model": state, **_official_extras()}, path)
    loaded = load_checkpoint_file(path)
    assert loaded["args"].model == "eva_g_patch14" and loaded["epoch"] == 29
    np.testing.assert_array_equal(loaded["history"], np.arange(3))
    model = _Toy()
    extra = EVACheckpointer(model).load_for_eval(path)
    assert extra["args"].input_size == 224
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_disallowed_class_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = str(tmp_path / "evil.pth")
    torch.save({"model": _Toy().state_dict(), "x": _Executes(str(marker))}, path)
    for load in (
        lambda: load_checkpoint_file(path),
        lambda: EVACheckpointer(_Toy()).load(path),
        lambda: convert_file(path, str(tmp_path / "out.pth")),
    ):
        with pytest.raises(InputError) as info:
            load()
        message = str(info.value)
        assert f"Checkpoint {path} pickles Python objects" in message
        assert "test_safe_load._touch" in message  # names the refused global
        assert "unsafe_load_executes_code=True" in message
        assert "--unsafe-load-executes-code" in message
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()

    # the opt-in whose name says so executes the file's code
    loaded = load_checkpoint_file(path, unsafe_load_executes_code=True)
    assert marker.read_text() == "executed" and loaded["x"] == str(marker)


def test_text_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("<html>404 Not Found</html>\n")
    for load in (
        lambda: load_checkpoint_file(str(path)),
        lambda: EVACheckpointer(_Toy()).load(str(path)),
        lambda: convert_file(str(path), str(tmp_path / "out.pth")),
    ):
        with pytest.raises(InputError, match="Cannot read checkpoint .*not a torch.save file"):
            load()


def test_resume_scanning_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    out = tmp_path / "out"
    ckpt = EVACheckpointer(_Toy(), str(out))
    ckpt.save("model_0000004")
    torch.save(
        {"model": _Toy().state_dict(), "x": _Executes(str(marker))}, out / "model_0000009.pth"
    )
    (out / "last_checkpoint").write_text("model_0000009.pth")
    newest = EVACheckpointer(_Toy(), str(out)).newest_complete_checkpoint()
    assert newest.endswith("model_0000004.pth")  # the unsafe one is skipped, not executed
    assert not marker.exists()


@pytest.mark.slow  # the conversion tool in a separate process
def test_convert_cli_opt_in(tmp_path):
    """The converter refuses a disallowed class; --unsafe-load-executes-code runs it."""
    from helpers.checkpoints import make_eva01

    marker = tmp_path / "marker"
    src, out = tmp_path / "src.pt", tmp_path / "out.pth"
    torch.save({"model": make_eva01("beit"), "x": _Executes(str(marker))}, src)
    cmd = [sys.executable, os.path.join(REPO, "tools", "convert_pretrained.py")]
    cmd += ["--input", str(src), "--output", str(out)]
    here = os.path.dirname(os.path.abspath(__file__))  # the pickled class lives in this module
    tests = os.path.join(REPO, "tests")  # and it imports helpers
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, here, tests]))
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert refused.returncode != 0 and "does not load safely" in refused.stderr
    assert not marker.exists() and not out.exists()
    allowed = subprocess.run(
        cmd + ["--unsafe-load-executes-code"], capture_output=True, text=True, env=env, check=False
    )
    assert allowed.returncode == 0, allowed.stderr
    assert marker.exists() and "weights_only=False" in allowed.stderr
    assert set(load_checkpoint_file(str(out))) == {"model"}  # the output is tensors only


def test_pkl_files_need_the_opt_in(tmp_path):
    """detectron2 reads .pkl with plain pickle.load: refused unless the opt-in is given."""
    import pickle

    marker = tmp_path / "marker"
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        model = {"fc.weight": np.zeros((3, 2), np.float32)}
        pickle.dump({"model": model, "__author__": "t", "x": _Executes(str(marker))}, f)
    with pytest.raises(InputError, match=r"model.pkl: detectron2 reads .pkl files .*executes"):
        EVACheckpointer(_Toy()).load(str(path))
    assert not marker.exists()
    EVACheckpointer(_Toy(), unsafe_load_executes_code=True).load(str(path))
    assert marker.exists()
