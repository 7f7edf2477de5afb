"""Weights by name through huggingface_hub, offline, from a hub cache the tests fill by hand.

conftest.py sets ``HF_HUB_OFFLINE=1``, a loopback ``HF_ENDPOINT`` and a private ``HF_HOME``, so
nothing here can reach the network; the one test that turns offline mode off runs in a
subprocess against a hub mirror this test serves on loopback (``HF_ENDPOINT``).
"""

import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading

import pytest
import torch
from detectron2.config import instantiate
from helpers.checkpoints import make_eva02_official, official_to_timm
from helpers.hub_cache import COMMIT, put_in_hub_cache
from helpers.shrink import FAST_HEADS, NARROW_HEADS
from huggingface_hub import constants
from safetensors.torch import save_file

from eva_det import model_zoo
from eva_det.checkpoint import convert_eva02
from eva_det.checkpoint.checkpointer import EVACheckpointer
from eva_det.checkpoint.hub import HubFile, missing_file_message, parse_hub_name, resolve_weights
from eva_det.errors import InputError

# EVA-02 B recipe at the shapes of test_convert_pretrained's tiny backbone (64 wide, 2 blocks,
# 4 heads, SwiGLU hidden 170 = 64 * 4 * 2/3), patch 16, pos_embed grid 224 / 16 = 14.
TINY_EVA02 = (
    [
        "model.backbone.net.embed_dim=64",
        "model.backbone.net.depth=2",
        "model.backbone.net.num_heads=4",
        "model.backbone.net.img_size=128",
        "model.backbone.net.window_size=4",
        "model.backbone.net.window_block_indexes=[0]",
        "model.backbone.square_pad=128",
    ]
    + FAST_HEADS
    + NARROW_HEADS
)  # narrow heads: small checkpoint files


def _cache() -> str:
    return constants.HF_HUB_CACHE


def test_the_suite_is_offline_with_a_private_cache():
    assert constants.HF_HUB_OFFLINE
    assert constants.ENDPOINT == "http://127.0.0.1:9"
    assert _cache().startswith(os.environ["HF_HOME"])


@pytest.mark.parametrize(
    "value, expected",
    [
        ("hf://BAAI/EVA/eva_coco_det.pth", HubFile("BAAI/EVA", "eva_coco_det.pth")),
        (
            "hf://Yuxin-CV/EVA-02@v1.0/eva02/det/eva02_B_coco_bsl.pth",
            HubFile("Yuxin-CV/EVA-02", "eva02/det/eva02_B_coco_bsl.pth", "v1.0"),
        ),
        (
            "hf://timm/eva02_base_patch14_224.mim_in22k",
            HubFile("timm/eva02_base_patch14_224.mim_in22k"),
        ),  # noqa: E501
        ("timm/eva02_large_patch14_224.mim_m38m", HubFile("timm/eva02_large_patch14_224.mim_m38m")),
        ("eva_lvis", HubFile("BAAI/EVA", "eva_lvis.pth")),
        ("eva02_L_coco_bsl", HubFile("Yuxin-CV/EVA-02", "eva02/det/eva02_L_coco_bsl.pth")),
        (
            "eva02_L_pt_m38m_p14to16",
            HubFile("Yuxin-CV/EVA-02", "eva02/pt/eva02_L_pt_m38m_p14to16.pt"),
        ),  # noqa: E501
        (
            "https://huggingface.co/Yuxin-CV/EVA-02/resolve/main/eva02/det/eva02_L_lvis_sys.pth",
            HubFile("Yuxin-CV/EVA-02", "eva02/det/eva02_L_lvis_sys.pth"),
        ),
        ("/data/eva_lvis.pth", None),
        ("output/model_final.pth", None),
        ("model_final.pth", None),
        ("https://example.org/eva_lvis.pth", None),
    ],
)
def test_hub_names(value, expected):
    assert parse_hub_name(value) == expected
    if expected is not None and value.startswith("hf://"):
        assert str(expected) == value


def test_bad_hub_name_says_the_syntax():
    with pytest.raises(InputError, match=r"hf://ORG/NAME/PATH"):
        parse_hub_name("hf://just-a-name")


def test_model_zoo_names_are_hub_names():
    cfg = model_zoo.get_config("eva02_B_coco_bsl", trained=True)
    assert cfg.train.init_checkpoint == "hf://Yuxin-CV/EVA-02/eva02/det/eva02_B_coco_bsl.pth"
    for name in model_zoo.list_models():
        entry = model_zoo.get_checkpoint(name)
        assert parse_hub_name(name) == parse_hub_name(entry.hub_name) == parse_hub_name(entry.url)


def test_zoo_checkpoint_loads_from_the_hub_cache(tmp_path):
    torch.manual_seed(0)
    cfg = model_zoo.get_config("eva02_B_coco_bsl", overrides=TINY_EVA02)
    source = instantiate(cfg.model)
    path = tmp_path / "eva02_B_coco_bsl.pth"
    torch.save({"model": source.state_dict()}, path)
    put_in_hub_cache(_cache(), "Yuxin-CV/EVA-02", "eva02/det/eva02_B_coco_bsl.pth", path)

    expected = source.state_dict()
    # model_zoo.get without checkpoint=: the release's hub file
    model = model_zoo.get("eva02_B_coco_bsl", overrides=TINY_EVA02)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # the same file as train.init_checkpoint, by zoo name, hf:// name and URL
    for value in (
        "eva02_B_coco_bsl",
        "hf://Yuxin-CV/EVA-02/eva02/det/eva02_B_coco_bsl.pth",
        model_zoo.get_checkpoint_url("eva02_B_coco_bsl"),
    ):
        torch.manual_seed(1)
        model = instantiate(cfg.model)
        checkpointer = EVACheckpointer(model)
        checkpointer.load(value)
        assert checkpointer.last_load_report.complete, value
        assert torch.equal(
            model.backbone.net.blocks[1].attn.q_proj.weight,
            source.backbone.net.blocks[1].attn.q_proj.weight,
        )


def _timm_file(tmp_path):
    """A timm EVA-02 MIM file (patch 14, 16x16 pos grid) as model.safetensors."""
    official = make_eva02_official(seed=3, patch=14, grid=16)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in official_to_timm(official).items()}, str(path))
    return official, path


def test_timm_name_is_downloaded_and_converted_on_load(tmp_path, caplog):
    official, path = _timm_file(tmp_path)
    name = "timm/eva02_base_patch14_224.mim_in22k"
    put_in_hub_cache(_cache(), name, "model.safetensors", path)
    cfg = model_zoo.get_config("eva02_B_coco_bsl", overrides=TINY_EVA02)
    model = instantiate(cfg.model)
    checkpointer = EVACheckpointer(model)
    with caplog.at_level("INFO", logger="eva_det"):
        checkpointer.load(name)
    assert "Converted pretrained backbone" in caplog.text
    # the reference: the official-layout converter on the same tensors (patch 14 -> 16,
    # pos grid 16 -> 14)
    reference, _ = convert_eva02(official)
    state = model.state_dict()
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    report = checkpointer.last_load_report
    assert report.num_loaded == len(reference) and not report.unexpected_keys
    assert not report.incorrect_shapes
    # the detector heads are not in a backbone file: reported, left at their init
    assert any(k.startswith("roi_heads.") for k in report.missing_keys)
    assert not any(k.startswith("backbone.net.blocks") for k in report.missing_keys)


def test_official_pretrained_file_by_zoo_name_is_converted(tmp_path):
    official = make_eva02_official(seed=4, patch=16, grid=14)
    path = tmp_path / "eva02_B_pt_in21k_p14to16.pt"
    torch.save({"module": official}, path)  # the official files wrap the weights
    put_in_hub_cache(_cache(), "Yuxin-CV/EVA-02", "eva02/pt/eva02_B_pt_in21k_p14to16.pt", path)
    model = instantiate(model_zoo.get_config("eva02_B_coco_bsl", overrides=TINY_EVA02).model)
    EVACheckpointer(model).load("eva02_B_pt_in21k_p14to16")
    reference, _ = convert_eva02(official)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_missing_file_offline_names_repo_file_and_fix():
    with pytest.raises(InputError) as err:
        resolve_weights("hf://BAAI/EVA/eva_not_there.pth")
    message = str(err.value)
    for part in ("'BAAI/EVA'", "'eva_not_there.pth'", "HF_HUB_OFFLINE=1", _cache()):
        assert part in message, part
    assert "hf download BAAI/EVA eva_not_there.pth" in message
    assert "train.init_checkpoint=/path/to/eva_not_there.pth" in message
    # a zoo model not in the cache: same message, before any model is built
    with pytest.raises(InputError, match=r"'eva02/det/eva02_L_coco_sys.pth'"):
        model_zoo.get("eva02_L_coco_sys")
    # a repository named without a file: both default weights files are named
    with pytest.raises(InputError, match=r"model\.safetensors.*pytorch_model\.bin"):
        resolve_weights("timm/eva02_tiny_patch14_224.mim_in22k")


def test_local_file_wins_over_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eva_lvis").write_bytes(b"")
    assert resolve_weights("eva_lvis").hub is None


def test_unreachable_hub_message_without_offline_mode():
    message = missing_file_message(
        HubFile("BAAI/EVA", "eva_lvis.pth"), "eva_lvis.pth", ConnectionError("refused"), False
    )
    assert f"the hub ({constants.ENDPOINT}) could not be reached: ConnectionError" in message
    assert "set HF_ENDPOINT to a mirror, or pass a local file" in message
    assert "HF_HUB_OFFLINE" not in message


class _Mirror(http.server.BaseHTTPRequestHandler):
    """A hub mirror on loopback serving ``files`` ({url path: bytes}), with HTTP ranges.

    The first GET of a file sends half of it and drops the connection (a network outage).
    """

    files: dict = {}
    requests: list = []

    def _answer(self, send_body: bool):
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][len("bytes=") :].split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return
        first_get = sum(r[0] == "GET" and r[1] == self.path for r in self.requests) == 1
        if first_get:
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data[start:])

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)

    def log_message(self, *args):
        pass


_DOWNLOAD = """
import sys
import torch
from eva_det import model_zoo
model = model_zoo.get("eva02_B_coco_bsl", overrides=sys.argv[1:])
w = model.backbone.net.blocks[1].attn.q_proj.weight
torch.save(w, sys.argv[0] + ".q.pt")
"""


@pytest.mark.slow  # a download through a local mirror with an outage
def test_mirror_download_survives_an_outage(tmp_path):
    torch.manual_seed(0)
    cfg = model_zoo.get_config("eva02_B_coco_bsl", overrides=TINY_EVA02)
    source = instantiate(cfg.model)
    buffer = io.BytesIO()
    torch.save({"model": source.state_dict()}, buffer)
    data = buffer.getvalue()
    url_path = "/Yuxin-CV/EVA-02/resolve/main/eva02/det/eva02_B_coco_bsl.pth"
    _Mirror.files, _Mirror.requests = {url_path: data}, []
    home = tmp_path / "hf"

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "download.py"
    script.write_text(_DOWNLOAD)
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_HOME=str(home))
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
    try:
        out = subprocess.run(
            [sys.executable, str(script)] + TINY_EVA02,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert out.returncode == 0, out.stderr[-3000:]
    gets = [r for r in _Mirror.requests if r[0] == "GET" and r[1] == url_path]
    assert len(gets) == 2, _Mirror.requests  # the dropped download was retried
    loaded = torch.load(str(script) + ".q.pt")
    assert torch.equal(loaded, source.backbone.net.blocks[1].attn.q_proj.weight)
    snapshot = home / "hub" / "models--Yuxin-CV--EVA-02" / "snapshots" / COMMIT
    assert (snapshot / "eva02/det/eva02_B_coco_bsl.pth").read_bytes() == data
