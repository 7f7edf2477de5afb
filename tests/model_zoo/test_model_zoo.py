"""eva_det.model_zoo: the checkpoint table, configs with eval flags, weight loading (raw and EMA),
offline errors, and docs/MODEL_ZOO.md generated from the table."""

import ast
import os
import re
import runpy
import shlex
import urllib.error

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser
from detectron2.utils.file_io import PathManager
from helpers.shrink import NARROW_HEADS, REPO
from helpers.shrink import zoo_shrink as shrink
from omegaconf import OmegaConf

from eva_det import model_zoo
from eva_det.checkpoint.hub import parse_hub_name
from eva_det.errors import InputError

# The releases, as listed by the official READMEs (EVA-01/det and EVA-02/det).
EVA01_NAMES = ["eva_o365", "eva_coco_det", "eva_coco_seg", "eva_lvis"]
EVA02_NAMES = [
    "eva02_B_coco_bsl", "eva02_L_coco_bsl", "eva02_B_lvis_bsl", "eva02_L_lvis_bsl",
    "eva02_B_coco_sys", "eva02_L_coco_sys", "eva02_L_lvis_sys", "eva02_L_m38m_to_o365",
    "eva02_L_in21k_to_o365", "eva02_L_coco_det_sys_o365", "eva02_L_coco_seg_sys_o365",
    "eva02_L_lvis_sys_o365",
]  # fmt: skip
_ABSENT = object()


def test_table_lists_every_release_with_hub_urls_and_existing_configs():
    assert model_zoo.list_models() == EVA01_NAMES + EVA02_NAMES
    assert model_zoo.list_models("EVA-01") == EVA01_NAMES
    assert model_zoo.list_models("EVA-02") == EVA02_NAMES
    for name in EVA01_NAMES:
        url = f"https://huggingface.co/BAAI/EVA/resolve/main/{name}.pth"
        assert model_zoo.get_checkpoint_url(name) == url
    for name in EVA02_NAMES:
        url = f"https://huggingface.co/Yuxin-CV/EVA-02/resolve/main/eva02/det/{name}.pth"
        assert model_zoo.get_checkpoint_url(name) == url
    for name in model_zoo.list_models():
        assert os.path.isfile(os.path.join(REPO, model_zoo.get_checkpoint(name).config)), name
    with pytest.raises(InputError, match="eva02_L_coco_bsl"):
        model_zoo.get_checkpoint("eva02_XL_coco")
    with pytest.raises(ValueError):
        model_zoo.list_models("EVA-03")


def test_published_numbers_and_flags():
    det = model_zoo.get_checkpoint("eva_coco_det")
    assert (det.box_ap, det.mask_ap) == (64.2, 53.9)
    assert det.config.endswith("COCO/cascade_mask_rcnn_vitdet_eva_1536.py")
    assert det.evaluations[0].expected == (("bbox", 64.164),)
    assert model_zoo.get_eval_overrides("eva_coco_det") == [
        "model.roi_heads.use_soft_nms=True",
        "model.roi_heads.method=linear",
        "model.roi_heads.iou_threshold=0.6",
        "model.roi_heads.override_score_thresh=0.0",
    ]
    assert model_zoo.get_eval_overrides("eva_lvis") == [
        "dataloader.evaluator.max_dets_per_image=1000",
        "model.roi_heads.maskness_thresh=0.5",
    ]
    assert model_zoo.get_eval_overrides("eva02_L_coco_bsl") == []
    bsl = model_zoo.get_checkpoint("eva02_L_coco_bsl")
    assert (bsl.box_ap, bsl.mask_ap) == (59.2, 50.8)
    assert "l_4attn_1024_lrd0p8" in bsl.config
    # the system-level COCO models: one run for boxes, one with maskness for masks
    assert "model.roi_heads.maskness_thresh=0.5" not in model_zoo.get_eval_overrides(
        "eva02_L_coco_sys"
    )
    segm = model_zoo.get_eval_overrides("eva02_L_coco_sys", task="segm")
    assert "model.roi_heads.maskness_thresh=0.5" in segm
    assert "model.roi_heads.class_wise=True" in segm
    assert model_zoo.get_evaluation("eva02_L_coco_sys", "segm").expected == (("segm", 53.8006),)
    o365_lvis = model_zoo.get_checkpoint("eva02_L_lvis_sys_o365")
    assert o365_lvis.evaluations[0].expected == (("bbox", 65.2244), ("segm", 57.3209))
    flags = model_zoo.get_eval_overrides("eva02_L_lvis_sys_o365")
    assert "train.model_ema.use_ema_weights_for_eval_only=True" in flags
    assert "dataloader.evaluator.max_dets_per_image=1000" in flags
    assert model_zoo.get_eval_overrides("eva02_L_m38m_to_o365") == []
    with pytest.raises(ValueError, match="no published 'segm'"):
        model_zoo.get_eval_overrides("eva_coco_det", task="segm")


def _parse(value: str):
    """A command-line override value as detectron2 parses it (literal, else string)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


@pytest.mark.parametrize("name", EVA01_NAMES + EVA02_NAMES)
def test_config_with_eval_flags_instantiates(name):
    entry = model_zoo.get_checkpoint(name)
    plain = LazyConfig.load(os.path.join(REPO, entry.config))
    cfg = model_zoo.get_config(name, overrides=shrink(name))
    assert cfg.train.init_checkpoint == ""
    flags = model_zoo.get_eval_overrides(name)
    for flag in flags:
        key, value = flag.split("=", 1)
        # an existing key (a typo would silently add a new one) now holding the flag's value
        assert OmegaConf.select(plain, key, default=_ABSENT) is not _ABSENT, flag
        assert OmegaConf.select(cfg, key) == _parse(value), flag
    model = instantiate(cfg.model)
    heads = model.roi_heads
    assert heads.use_soft_nms == ("model.roi_heads.use_soft_nms=True" in flags)
    if heads.use_soft_nms:
        # EVA-02's evaluations switch to class-wise suppression; EVA-01's is class-wise anyway
        assert heads.soft_nms_params.class_wise
        assert heads.soft_nms_params.iou_threshold == 0.6
    elif entry.family == "EVA-02":
        assert not heads.soft_nms_params.class_wise
    maskness = 0.5 if "model.roi_heads.maskness_thresh=0.5" in flags else None
    assert heads.maskness_thresh == maskness
    assert heads.mask_on == ("/eva2_o365/" not in entry.config)  # O365 detectors: boxes only


def test_get_config_points_at_the_checkpoint():
    cfg = model_zoo.get_config("eva02_B_coco_bsl", trained=True)
    assert cfg.train.init_checkpoint == model_zoo.get_checkpoint("eva02_B_coco_bsl").hub_name
    cfg = model_zoo.get_config("eva_lvis", trained=True, checkpoint="/data/eva_lvis.pth")
    assert cfg.train.init_checkpoint == "/data/eva_lvis.pth"
    assert cfg.dataloader.evaluator.max_dets_per_image == 1000
    assert model_zoo.get_config("eva_lvis", trained=False).train.init_checkpoint == ""
    cfg = model_zoo.get_config("eva02_L_coco_seg_sys_o365")
    assert cfg.train.model_ema.enabled and cfg.train.model_ema.use_ema_weights_for_eval_only


def _named_tensors(model):
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def test_get_loads_raw_or_ema_weights(tmp_path):
    name_ema, name_raw = "eva02_L_coco_det_sys_o365", "eva02_L_coco_bsl"
    overrides = shrink(name_ema) + NARROW_HEADS
    torch.manual_seed(0)
    raw = instantiate(model_zoo.get_config(name_ema, overrides=overrides).model)
    torch.manual_seed(1)
    ema = instantiate(model_zoo.get_config(name_ema, overrides=overrides).model)
    path = tmp_path / "tiny.pth"
    ema_state = {k: v.detach().clone() for k, v in _named_tensors(ema).items()}
    torch.save({"model": raw.state_dict(), "ema_state": ema_state}, path)

    # the official evaluation of this checkpoint uses the EMA weights
    model = model_zoo.get(name_ema, checkpoint=str(path), overrides=overrides)
    assert not model.training
    for k, v in model.named_parameters():
        assert torch.equal(v, ema_state[k]), k
    # one without EMA in its evaluation loads the raw weights (same L-sized shrunk model)
    model = model_zoo.get(name_raw, checkpoint=str(path), overrides=overrides)
    raw_params = dict(raw.named_parameters())
    for k, v in model.named_parameters():
        assert torch.equal(v, raw_params[k]), k


def test_offline_download_error_names_url_and_fix(monkeypatch):
    """URLs off the hub go through PathManager; hub files: tests/checkpoint/test_hub_weights.py."""
    calls = []

    def no_network(path, **kwargs):
        calls.append(path)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(PathManager, "get_local_path", no_network)
    url = "http://127.0.0.1:9/eva02_B_coco_bsl.pth"
    with pytest.raises(InputError) as err:
        model_zoo.get("eva02_B_coco_bsl", checkpoint=url, overrides=shrink("eva02_B_coco_bsl"))
    message = str(err.value)
    assert calls == [url]
    assert url in message and "Name or service not known" in message
    assert "checkpoint='/path/to/eva02_B_coco_bsl.pth'" in message
    assert "train.init_checkpoint=/path/to/eva02_B_coco_bsl.pth" in message


def test_missing_local_checkpoint_is_named(tmp_path):
    missing = str(tmp_path / "eva02_B_coco_bsl.pth")
    with pytest.raises(InputError, match=re.escape(missing)):
        model_zoo.resolve_checkpoint(missing)
    present = tmp_path / "present.pth"
    present.write_bytes(b"")
    assert model_zoo.resolve_checkpoint(str(present)) == str(present)


DOC = os.path.join(REPO, "docs", "MODEL_ZOO.md")


def test_committed_doc_equals_generated(tmp_path):
    with open(DOC) as f:
        assert f.read() == model_zoo.render_model_zoo_markdown()
    tool = runpy.run_path(os.path.join(REPO, "tools", "model_zoo_doc.py"))
    assert tool["main"](["--check"]) == 0
    out = tmp_path / "MODEL_ZOO.md"
    out.write_text("stale\n")
    assert tool["main"](["--check", "--output", str(out)]) == 1
    assert tool["main"](["--output", str(out)]) == 0
    assert out.read_text() == model_zoo.render_model_zoo_markdown()


def test_doc_commands_are_copyable_and_match_the_table():
    text = model_zoo.render_model_zoo_markdown()
    every = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    blocks = [b for b in every if "--eval-only" in b]
    runs = [
        (entry, evaluation) for entry in model_zoo.CHECKPOINTS for evaluation in entry.evaluations
    ]
    assert len(blocks) == len(runs) == 15
    configs = {}
    for block, (entry, evaluation) in zip(blocks, runs):
        lines = block.rstrip("\n").split("\n")
        assert all(line.endswith(" \\") for line in lines[:-1]), block
        assert not lines[-1].endswith("\\") and "#" not in block, block
        argv = shlex.split(block.replace("\\\n", " "))
        assert argv[:2] == ["python", "tools/lazyconfig_train_net.py"]
        args = default_argument_parser().parse_args(argv[2:])
        assert args.eval_only and args.config_file == entry.config
        assert args.opts == [f"train.init_checkpoint={entry.hub_name}"] + list(evaluation.overrides)
        if entry.config not in configs:
            configs[entry.config] = LazyConfig.load(os.path.join(REPO, entry.config))
        for opt in args.opts:
            key = opt.split("=", 1)[0]
            assert OmegaConf.select(configs[entry.config], key, default=_ABSENT) is not _ABSENT
        after = text[text.index(block) + len(block) :]
        printed = re.match(r"```\n\nPrints (.*) \(published\)\.", after).group(1)
        assert printed == ", ".join(f"`{t}` AP **{ap}**" for t, ap in evaluation.expected)
    assert "**64.164**" in text and "**57.3209**" in text
    # the pretrained-backbone training command: an EVA-02 recipe and a hub name
    (train,) = [b for b in every if "--eval-only" not in b]
    argv = shlex.split(train.replace("\\\n", " "))
    args = default_argument_parser().parse_args(argv[2:])
    assert os.path.isfile(os.path.join(REPO, args.config_file)) and not args.eval_only
    (init,) = args.opts
    hub = parse_hub_name(init.split("=", 1)[1])
    assert hub is not None and hub.repo_id.startswith("timm/eva02_large")
