"""Tests for pretrained-backbone conversion (eva_det.checkpoint) and tools/convert_pretrained.py.

Synthetic checkpoints with tiny dims (embed 64, depth 2, 4 heads) in every source layout; expected
names and the resize reference are written out here independently of the implementation.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.checkpoints import (
    DEPTH,
    DIM,
    EVA01_HIDDEN,
    EVA02_HIDDEN,
    HEAD_DIM,
    HEADS,
    make_eva01,
    make_eva02_official,
    official_to_timm,
)

from eva_det.checkpoint import (
    ConversionResult,
    convert_eva01,
    convert_eva02,
    convert_file,
    convert_pretrained,
    convert_timm_eva02,
    detect_format,
    eva02_to_timm,
    unwrap_state_dict,
)
from eva_det.checkpoint.convert_common import fuse_qkv, resize_pos_embed, split_qkv

REPO = Path(__file__).resolve().parents[2]


def expected_eva01_keys(gamma=False):
    keys = {
        "backbone.net.pos_embed",
        "backbone.net.patch_embed.proj.weight",
        "backbone.net.patch_embed.proj.bias",
    }
    for i in range(DEPTH):
        p = f"backbone.net.blocks.{i}."
        names = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
        names += ["attn.qkv.weight", "attn.q_bias", "attn.v_bias"]
        names += ["attn.proj.weight", "attn.proj.bias"]
        names += ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
        names += ["gamma_1", "gamma_2"] if gamma else []
        keys.update(p + n for n in names)
    return keys


def expected_eva02_keys(ffn_ln=True):
    keys = {
        "backbone.net.pos_embed",
        "backbone.net.patch_embed.proj.weight",
        "backbone.net.patch_embed.proj.bias",
    }
    for i in range(DEPTH):
        p = f"backbone.net.blocks.{i}."
        names = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]
        names += ["attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"]
        names += ["attn.q_bias", "attn.v_bias", "attn.proj.weight", "attn.proj.bias"]
        names += ["mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias"]
        names += ["mlp.w3.weight", "mlp.w3.bias"]
        names += ["mlp.ffn_ln.weight", "mlp.ffn_ln.bias"] if ffn_ln else []
        keys.update(p + n for n in names)
    return keys


def reference_patch_resize(weight):
    return F.interpolate(weight.float(), size=(16, 16), mode="bicubic", align_corners=False)


def reference_pos_resize(pos, old_grid, new_grid=14):
    grid = pos[:, 1:].reshape(1, old_grid, old_grid, DIM).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, DIM)], dim=1)


class _Module(nn.Module):
    """Empty container to spell out a state-dict layout as a module tree."""


def tiny_detector(kind, ffn_ln=True):
    """Module with exactly the detector's backbone names and shapes (kind: 'eva01' | 'eva02')."""
    net = _Module()
    net.pos_embed = nn.Parameter(torch.zeros(1, 1 + 14 * 14, DIM))
    net.patch_embed = _Module()
    net.patch_embed.proj = nn.Conv2d(3, DIM, kernel_size=16, stride=16)
    net.blocks = nn.ModuleList()
    for _ in range(DEPTH):
        blk = _Module()
        blk.norm1, blk.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        blk.attn, blk.mlp = _Module(), _Module()
        if kind == "eva01":
            blk.attn.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
            blk.mlp.fc1 = nn.Linear(DIM, EVA01_HIDDEN)
            blk.mlp.fc2 = nn.Linear(EVA01_HIDDEN, DIM)
        else:
            blk.attn.q_proj = nn.Linear(DIM, DIM, bias=False)
            blk.attn.k_proj = nn.Linear(DIM, DIM, bias=False)
            blk.attn.v_proj = nn.Linear(DIM, DIM, bias=False)
            blk.mlp.w1 = nn.Linear(DIM, EVA02_HIDDEN)
            blk.mlp.w2 = nn.Linear(DIM, EVA02_HIDDEN)
            if ffn_ln:
                blk.mlp.ffn_ln = nn.LayerNorm(EVA02_HIDDEN)
            blk.mlp.w3 = nn.Linear(EVA02_HIDDEN, DIM)
        blk.attn.q_bias = nn.Parameter(torch.zeros(DIM))
        blk.attn.v_bias = nn.Parameter(torch.zeros(DIM))
        blk.attn.proj = nn.Linear(DIM, DIM)
        net.blocks.append(blk)
    model = _Module()
    model.backbone = _Module()
    model.backbone.net = net
    return model


# ---------------------------------------------------------------- EVA-01


def test_eva01_psz14_keys_shapes_values():
    src = make_eva01("beit")
    assert detect_format(src) == "eva01"
    out, dropped = convert_eva01(src)

    assert set(out) == expected_eva01_keys()
    assert out["backbone.net.patch_embed.proj.weight"].shape == (DIM, 3, 16, 16)
    assert out["backbone.net.pos_embed"].shape == (1, 1 + 14 * 14, DIM)
    for key, value in src.items():
        target = "backbone.net." + key
        if key.startswith("blocks."):
            assert torch.equal(out[target], value), key
    assert torch.equal(out["backbone.net.patch_embed.proj.bias"], src["patch_embed.proj.bias"])
    # Resizes equal F.interpolate computed here.
    assert torch.equal(
        out["backbone.net.patch_embed.proj.weight"],
        reference_patch_resize(src["patch_embed.proj.weight"]),
    )
    expected_pos = reference_pos_resize(src["pos_embed"], old_grid=16)
    assert torch.equal(out["backbone.net.pos_embed"], expected_pos)
    assert torch.equal(out["backbone.net.pos_embed"][:, 0], src["pos_embed"][:, 0])  # cls slot

    assert set(dropped) == {
        "cls_token",
        "mask_token",
        "rel_pos_bias.relative_position_bias_table",
        "norm.weight",
        "norm.bias",
        "lm_head.weight",
        "lm_head.bias",
    }
    assert all(dropped.values())


def test_eva01_loads_strictly_into_detector_layout():
    out, _ = convert_eva01(make_eva01("beit"))
    model = tiny_detector("eva01")
    model.load_state_dict(out, strict=True)  # names and shapes must match exactly
    assert torch.equal(
        model.backbone.net.blocks[1].mlp.fc2.bias, out["backbone.net.blocks.1.mlp.fc2.bias"]
    )


def test_resize_is_bicubic_and_keeps_constants():
    # Bicubic interpolation reproduces a constant field (a check independent of F.interpolate).
    src = make_eva01("beit")
    src["patch_embed.proj.weight"] = torch.full((DIM, 3, 14, 14), 0.25)
    out, _ = convert_eva01(src)
    assert torch.allclose(
        out["backbone.net.patch_embed.proj.weight"], torch.full((DIM, 3, 16, 16), 0.25)
    )
    # Already at the target size: the same tensor object comes back.
    already = make_eva01("beit", patch=16, grid=14)
    out16, _ = convert_eva01(already)
    assert out16["backbone.net.patch_embed.proj.weight"] is already["patch_embed.proj.weight"]
    assert out16["backbone.net.pos_embed"] is already["pos_embed"]


def test_pos_embed_without_cls_slot_gets_zero_slot():
    pos = torch.randn(1, 14 * 14, DIM)
    out = resize_pos_embed(pos, 14)
    assert out.shape == (1, 1 + 14 * 14, DIM)
    assert torch.equal(out[:, 0], torch.zeros(1, DIM))
    assert torch.equal(out[:, 1:], pos)
    with pytest.raises(ValueError, match="square grid"):
        resize_pos_embed(torch.randn(1, 7, DIM), 14)


def test_eva01_clip_prefix_and_outside_keys():
    inner = make_eva01("beit")
    src = {"visual." + k: v for k, v in inner.items()}
    src["text.token_embedding.weight"] = torch.randn(10, DIM)
    src["logit_scale"] = torch.tensor(1.0)
    assert detect_format(src) == "eva01"
    out, dropped = convert_eva01(src)
    ref, ref_dropped = convert_eva01(inner)
    assert set(out) == set(ref)
    assert all(torch.equal(out[k], ref[k]) for k in out)
    assert set(dropped) == {"visual." + k for k in ref_dropped} | {
        "text.token_embedding.weight",
        "logit_scale",
    }
    assert "outside the ViT" in dropped["logit_scale"]


def test_eva01_mae_qkv_bias_split_and_k_bias_is_softmax_invariant():
    src = make_eva01("mae")
    out, dropped = convert_eva01(src)
    assert set(out) == expected_eva01_keys()
    bias = src["blocks.0.attn.qkv.bias"]
    assert torch.equal(out["backbone.net.blocks.0.attn.q_bias"], bias[:DIM])
    assert torch.equal(out["backbone.net.blocks.0.attn.v_bias"], bias[2 * DIM :])
    assert not any("qkv" in k for k in dropped)
    # Why dropping the k bias is exact: it shifts each query's logits by a constant.
    x = torch.randn(5, DIM, dtype=torch.float64)
    w = src["blocks.0.attn.qkv.weight"].double()
    q, k, _ = (x @ w.T + bias.double()).split(DIM, dim=-1)
    k_no_bias = x @ w[DIM : 2 * DIM].T
    assert torch.allclose((q @ k.T).softmax(-1), (q @ k_no_bias.T).softmax(-1), atol=1e-12)


def test_eva01_separate_qkv_fused_and_round_trip():
    src = make_eva01("separate")
    out, _ = convert_eva01(src)
    assert set(out) == expected_eva01_keys()
    qkv = out["backbone.net.blocks.1.attn.qkv.weight"]
    parts = [src[f"blocks.1.attn.{n}_proj.weight"] for n in ("q", "k", "v")]
    assert torch.equal(qkv[:DIM], parts[0])
    assert torch.equal(qkv[DIM : 2 * DIM], parts[1])
    assert torch.equal(qkv[2 * DIM :], parts[2])
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(fuse_qkv(*parts)), parts))
    # The MAE/BEiT fused layout: reshape(.., 3, heads, head_dim) puts q first.
    x = torch.randn(3, DIM)
    fused = (x @ qkv.T).reshape(3, 3, HEADS, HEAD_DIM)
    assert torch.allclose(fused[:, 0].reshape(3, DIM), x @ parts[0].T)


def test_eva01_gamma_dropped_with_warning_or_kept(caplog):
    src = make_eva01("beit", gamma=True)
    with caplog.at_level(logging.WARNING, logger="eva_det.checkpoint"):
        out, dropped = convert_eva01(src)
    assert set(out) == expected_eva01_keys()
    assert {"blocks.0.gamma_1", "blocks.1.gamma_2"} <= set(dropped)
    assert "keep_gamma" in dropped["blocks.0.gamma_1"]
    assert any("gamma_1" in r.getMessage() for r in caplog.records)
    out_kept, dropped_kept = convert_eva01(src, keep_gamma=True)
    assert set(out_kept) == expected_eva01_keys(gamma=True)
    assert torch.equal(out_kept["backbone.net.blocks.1.gamma_2"], src["blocks.1.gamma_2"])
    assert not any("gamma" in k for k in dropped_kept)


def test_timm_eva_format_uses_eva01_names():
    src = make_eva01("beit")
    a = convert_pretrained(src, "timm_eva")
    b = convert_pretrained(src, "eva01")
    assert set(a.state_dict) == set(b.state_dict)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


# ---------------------------------------------------------------- EVA-02


def test_eva02_official_keys_values_and_strict_load():
    src = make_eva02_official()
    assert detect_format(src) == "eva02"
    out, dropped = convert_eva02(src)
    assert set(out) == expected_eva02_keys()
    for key, value in src.items():
        if "backbone.net." + key in out:
            assert torch.equal(out["backbone.net." + key], value), key
    # Already patch 16 / 14x14 grid: nothing resized.
    assert out["backbone.net.patch_embed.proj.weight"] is src["patch_embed.proj.weight"]
    assert out["backbone.net.pos_embed"] is src["pos_embed"]
    rope_keys = {k for k in src if "rope" in k}
    assert len(rope_keys) == 2 + 2 * DEPTH
    assert set(dropped) == rope_keys | {
        "cls_token",
        "mask_token",
        "norm.weight",
        "norm.bias",
        "lm_head.weight",
        "lm_head.bias",
    }
    assert "rotary" in dropped["blocks.1.attn.rope.freqs_sin"]

    model = tiny_detector("eva02")
    model.load_state_dict(out, strict=True)
    assert torch.equal(model.backbone.net.blocks[0].attn.v_bias, src["blocks.0.attn.v_bias"])


def test_eva02_patch14_file_is_resized():
    src = make_eva02_official(patch=14, grid=16)
    out, _ = convert_eva02(src)
    assert torch.equal(
        out["backbone.net.patch_embed.proj.weight"],
        reference_patch_resize(src["patch_embed.proj.weight"]),
    )
    assert torch.equal(out["backbone.net.pos_embed"], reference_pos_resize(src["pos_embed"], 16))


def test_timm_eva02_matches_official_and_round_trips():
    official = make_eva02_official()
    timm_sd = official_to_timm(official)
    timm_sd["fc_norm.weight"] = torch.randn(DIM)  # timm fine-tuned files carry fc_norm / head
    assert detect_format(timm_sd) == "timm_eva02"
    out, dropped = convert_timm_eva02(timm_sd)
    ref, _ = convert_eva02(official)
    assert set(out) == set(ref) == expected_eva02_keys()
    assert all(torch.equal(out[k], ref[k]) for k in out)
    assert "fc_norm.weight" in dropped

    back, back_dropped = eva02_to_timm(out)
    assert not back_dropped
    expected = {k: v for k, v in timm_sd.items() if k not in dropped}
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in back)


def test_timm_eva02_packed_glu_and_fused_qkv():
    # timm EVA-02 Ti/S: fused qkv + q/v bias, GluMlp with packed fc1 (gate rows first), no norm.
    official = make_eva02_official()
    timm_sd = {}
    for key, value in official.items():
        if "rope" in key or "ffn_ln" in key or ".attn.k_proj." in key or ".attn.v_proj." in key:
            continue
        if key.endswith("attn.q_proj.weight"):
            p = key[: -len("q_proj.weight")]
            parts = [official[f"{p}{n}_proj.weight"] for n in ("q", "k", "v")]
            timm_sd[p + "qkv.weight"] = torch.cat(parts)
        elif ".mlp.w1." in key:
            w2 = official[key.replace(".w1.", ".w2.")]
            timm_sd[key.replace(".w1.", ".fc1.")] = torch.cat([value, w2])
        elif ".mlp.w2." in key:
            continue
        else:
            timm_sd[key.replace(".w3.", ".fc2.")] = value
    assert detect_format(timm_sd) == "timm_eva02"
    out, _ = convert_timm_eva02(timm_sd)
    assert set(out) == expected_eva02_keys(ffn_ln=False)
    for i in range(DEPTH):
        for name in ("attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight"):
            assert torch.equal(
                out[f"backbone.net.blocks.{i}.{name}"], official[f"blocks.{i}.{name}"]
            )
        for name in ("mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias"):
            assert torch.equal(
                out[f"backbone.net.blocks.{i}.{name}"], official[f"blocks.{i}.{name}"]
            )
    tiny_detector("eva02", ffn_ln=False).load_state_dict(out, strict=True)


def test_eva02_to_timm_drops_detector_only_keys():
    out, _ = convert_eva02(make_eva02_official())
    out["backbone.net.blocks.0.attn.rel_pos_h"] = torch.zeros(3, HEAD_DIM)
    out["backbone.net.rope_glb.freqs_cos"] = torch.zeros(4, HEAD_DIM)
    out["roi_heads.box_predictor.0.cls_score.weight"] = torch.zeros(2, 3)
    back, dropped = eva02_to_timm(out)
    assert set(dropped) == {
        "backbone.net.blocks.0.attn.rel_pos_h",
        "backbone.net.rope_glb.freqs_cos",
        "roi_heads.box_predictor.0.cls_score.weight",
    }
    assert "blocks.0.mlp.fc1_g.weight" in back and "blocks.0.attn.q_proj.bias" in back


# ---------------------------------------------------------------- dispatch and errors


def test_detect_and_convert_errors():
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        detect_format({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="Unknown format"):
        convert_pretrained(make_eva01(), "eva03")
    converted, _ = convert_eva01(make_eva01())
    with pytest.raises(ValueError, match="already in eva_det"):
        convert_pretrained(converted)
    two = {"a." + k: v for k, v in make_eva01().items()}
    two.update({"b." + k: v for k, v in make_eva01().items()})
    with pytest.raises(ValueError, match="several ViTs"):
        detect_format(two)
    assert detect_format(two, prefix="b.") == "eva01"
    broken = make_eva02_official()
    del broken["blocks.1.mlp.w3.weight"]
    with pytest.raises(ValueError, match="Block 1 has no 'mlp.w3.weight'"):
        convert_eva02(broken)


def test_unwrap_state_dict():
    sd = make_eva01()
    assert unwrap_state_dict({"module": {"model": sd}, "epoch": 3}).keys() == sd.keys()
    assert unwrap_state_dict({"state_dict": sd}).keys() == sd.keys()
    mixed = dict(sd, args=argparse.Namespace(lr=1.0))
    assert unwrap_state_dict(mixed).keys() == sd.keys()


# ---------------------------------------------------------------- CLI


def _load_cli():
    # Load by path: detectron2's wheel installs its own top-level `tools` package.
    spec = importlib.util.spec_from_file_location(
        "eva_det_convert_pretrained_cli", REPO / "tools" / "convert_pretrained.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_source(path):
    # Official EVA files pickle their training args next to the weights.
    src = make_eva01("beit")
    torch.save({"model": src, "args": argparse.Namespace(model="eva_g_patch14")}, path)
    return src


def test_cli_end_to_end(tmp_path, caplog):
    src_path, out_path = tmp_path / "eva_psz14.pt", tmp_path / "converted.pth"
    src = _write_source(src_path)
    cli = _load_cli()
    with caplog.at_level(logging.INFO, logger="eva_det.checkpoint"):
        assert cli.main(["--input", str(src_path), "--output", str(out_path)]) == 0
    saved = torch.load(out_path, map_location="cpu", weights_only=True)
    assert list(saved) == ["model"]
    expected, _ = convert_pretrained(src)
    assert set(saved["model"]) == set(expected) == expected_eva01_keys()
    assert all(torch.equal(saved["model"][k], expected[k]) for k in expected)
    text = caplog.text
    assert "weights_only=False" not in text  # argparse.Namespace is allowed by name
    assert f"{len(expected)} keys converted, 7 source keys dropped" in text
    assert "dropped lm_head.weight (1 key)" in text
    assert "dropped rel_pos_bias.relative_position_bias_table" in text
    assert sorted(os.listdir(tmp_path)) == ["converted.pth", "eva_psz14.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert out_path.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain torch.save


def test_output_loads_with_detectron2_checkpointer(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    src_path, out_path = tmp_path / "eva02.pt", tmp_path / "eva02_det.pth"
    torch.save({"model": make_eva02_official()}, src_path)
    result = convert_file(str(src_path), str(out_path))
    model = tiny_detector("eva02")
    DetectionCheckpointer(model).load(str(out_path))
    loaded = model.state_dict()
    assert set(loaded) == set(result.state_dict)
    assert all(torch.equal(loaded[k], result.state_dict[k]) for k in loaded)
    with pytest.raises(ValueError, match=r"use a \.pth name"):
        convert_file(str(src_path), str(tmp_path / "x.pkl"))


@pytest.mark.slow  # the conversion tool in a separate process
def test_cli_runs_as_script(tmp_path):
    src_path, out_path = tmp_path / "eva02.pt", tmp_path / "out.pth"
    torch.save({"module": make_eva02_official()}, src_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_pretrained.py"), "--input", str(src_path)]
        + ["--output", str(out_path), "--format", "eva02"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dropped blocks.*.attn.rope.freqs_cos (2 keys)" in proc.stderr
    saved = torch.load(out_path, map_location="cpu", weights_only=True)
    assert set(saved["model"]) == expected_eva02_keys()


def test_cli_write_is_atomic(tmp_path, monkeypatch):
    src_path, out_path = tmp_path / "eva_psz14.pt", tmp_path / "converted.pth"
    _write_source(src_path)
    out_path.write_bytes(b"previous")

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        convert_file(str(src_path), str(out_path))
    assert out_path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["converted.pth", "eva_psz14.pt"]

    out_path.unlink()
    with pytest.raises(OSError, match="disk full"):
        _load_cli().main(["--input", str(src_path), "--output", str(out_path)])
    assert sorted(os.listdir(tmp_path)) == ["eva_psz14.pt"]


def test_result_is_a_named_tuple():
    result = convert_pretrained(make_eva02_official())
    assert isinstance(result, ConversionResult)
    assert result.state_dict is result[0] and result.dropped is result[1]
