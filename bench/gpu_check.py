#!/usr/bin/env python
"""One prepared GPU check of eva_det: the CUDA-only tests and the headline figures, in one run.

Made for a single short lease of one H200 (``bash bench/gpu_check.sh``, see bench/README.md): each
section runs in its own subprocess under a time limit, so one that crashes, runs out of memory or
hangs loses only its own figures; the results file is rewritten after every section. Sections, the
most important figures first:

* ``backbone``: EVA-01 1B ViT forward (config ``cascade_mask_rcnn_vitdet_eva.py`` at 1280,
  ``..._1536.py`` at 1536: rel-pos tables resized the "beit" way), batch 1, under bf16 autocast,
  for every ``attn_impl`` next to the official formulation ("plain"), plus plain in fp32:
  img/s, achieved TFLOP/s (model FLOPs counted from the config, see :func:`vit_flops`) against the
  989 TFLOP/s dense bf16 peak, and the error against the fp32 plain output.
* ``detector``: the whole EVA-01 1B Cascade Mask R-CNN at 1280 with EVA's evaluation protocol
  (score threshold 0, linear soft-NMS at 0.6 over all 80k (box, class) pairs, maskness 0.5), in
  img/s: bf16 autocast with eva_det's default attention, fp32 with the official attention, fp16.
  Timed from the preprocessed image to the detections with their 28 x 28 mask probabilities
  (``inference(..., do_postprocess=False)``): pasting masks into the full image is left out,
  since with random weights far more boxes survive soft-NMS than with a trained model.
* ``soft_nms``: ``batched_soft_nms`` on one image of 1000 proposals x 80 classes (80k boxes) on
  the device, checked against the sequential reference; ms per image.
* ``train_memory``: peak memory of one EVA-01 1B training step (batch 1, fp16 AMP, activation
  checkpointing, AdamW; the second step, so optimizer state is counted) at 1280 and 1536.
* ``eva02``: EVA-02 L ViT forward at 1536 (``eva2_o365_to_coco_..._l_8attn_1536``), as ``backbone``
  with its attention paths ("sdpa", official "plain").
* ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda tests``), which skip without CUDA.

The results file (``gpu_check.json`` and the same as ``gpu_check.md``) holds the date, the
hardware and software, every section's rows, its status and the verdict on the goals: EVA-01 1B
detector >= 20 img/s in bf16 at 1280, soft-NMS <= 10 ms per image, training step <= 40 GB at 1280.

``--smoke`` runs every section on the CPU with tiny models (depth 2, embed 64, 128 px, 400
boxes); tests/bench/test_gpu_check.py runs it so that the device run works the first time.

    bash bench/gpu_check.sh --out "$OUT"              # on the GPU machine, about 6 minutes
    python bench/gpu_check.py --smoke --out /tmp/gc   # here, about 40 s
"""

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if BENCH not in sys.path:  # sibling benches (memory.py, soft_nms.py) as modules
    sys.path.insert(0, BENCH)

EVA01 = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"
EVA01_1536 = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva_1536.py"
EVA02_L = (
    "projects/ViTDet/configs/eva2_o365_to_coco/"
    "eva2_o365_to_coco_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
)
PEAK_BF16_TFLOPS = 989.0  # H100 / H200 SXM dense bf16 (datasheet)
GB = 1e9
EVA_PROTOCOL = [  # REFERENCE.md section 1: EVA-01's COCO evaluation flags (+ maskness for masks)
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.method=linear",
    "model.roi_heads.iou_threshold=0.6",
    "model.roi_heads.override_score_thresh=0.0",
    "model.roi_heads.maskness_thresh=0.5",
]
# --smoke: the CPU test size of tests/helpers/shrink.py (depth 2, embed 64, 128 px)
SMOKE_VIT = [
    "model.backbone.net.embed_dim=64",
    "model.backbone.net.depth=2",
    "model.backbone.net.num_heads=4",
    "model.backbone.net.img_size=128",
    "model.backbone.net.window_size=4",
    "model.backbone.net.window_block_indexes=[0]",
    "model.backbone.net.use_act_checkpoint=False",
]
SMOKE_EVA01 = SMOKE_VIT + ["model.backbone.net.mlp_ratio=2"]
SMOKE_DETECTOR = (
    ["model.proposal_generator.post_nms_topk=[1000,20]"]
    + [f"model.roi_heads.{key}.num_classes=4" for key in ("box_predictors.0", "box_predictors.1")]
    + [
        "model.roi_heads.box_predictors.2.num_classes=4",
        "model.roi_heads.mask_head.num_classes=4",
        "model.roi_heads.num_classes=4",
    ]
)

# --smoke training: few proposals and sampled RoIs keep two steps of the cascade cheap on a CPU
SMOKE_TRAIN = [
    "model.proposal_generator.post_nms_topk=[100,20]",
    "model.roi_heads.batch_size_per_image=32",
]

# Goals of issue 15: (section, row filter, field, comparison, threshold, text)
GOALS = [
    (
        "detector",
        {"precision": "bf16", "soft_nms_topk": None},
        "img_per_s",
        ">=",
        20.0,
        "EVA-01 1B detector at 1280, EVA protocol, bf16: >= 20 img/s",
    ),
    ("soft_nms", {}, "ms_per_image", "<=", 10.0, "batched_soft_nms, 80k boxes: <= 10 ms/image"),
    (
        "train_memory",
        {"size": 1280},
        "peak_gb",
        "<=",
        40.0,
        "EVA-01 1B training step at 1280 (AMP, checkpointing): <= 40 GB",
    ),
]


# ------------------------------------------------------------------------------------ helpers


class Recorder:
    """A section's results (``rows`` and ``info``), rewritten atomically to ``path`` on each add, so
    whatever a section measured before it was stopped survives."""

    def __init__(self, path: str):
        self.path, self.data = path, {"rows": [], "info": {}}

    def info(self, **kw) -> None:
        self.data["info"].update(kw)
        self._write()

    def row(self, **kw) -> None:
        self.data["rows"].append(kw)
        self._write()
        print(json.dumps(kw), flush=True)

    def _write(self) -> None:
        from eva_det.utils.atomic import atomic_write_text

        atomic_write_text(json.dumps(self.data, indent=1), self.path)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int, warmup: int = 1) -> list:
    """Seconds of each of ``repeat`` calls of ``fn`` after ``warmup`` untimed calls (device
    synchronised around every call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def load(relpath: str, overrides=()):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(REPO, relpath))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def _arg(net_cfg, name: str):
    """``net_cfg.name``, or the default of the backbone class's constructor argument."""
    if name in net_cfg:
        return net_cfg[name]
    return inspect.signature(net_cfg._target_).parameters[name].default


def vit_flops(net_cfg, size: int) -> float:
    """Forward FLOPs (2 per multiply-add) of the config's ViT on one ``size`` x ``size`` image.

    Counted: patch embedding, qkv + output projections, q.k and attention-weighted v (windowed
    blocks on the grid padded to whole windows, as ``window_partition`` does), the decomposed
    rel-pos einsums (EVA-01), the MLP (EVA-01: fc1 + fc2; EVA-02 SwiGLU: w1, w2, w3). Not counted:
    norms, softmax, activations, RoPE, bias adds (elementwise, < 1%).

    Args:
        net_cfg: ``cfg.model.backbone.net`` (an ``EVAViT`` or ``EVA02ViT`` LazyCall).
        size (int): input side in pixels.
    """
    patch, dim = _arg(net_cfg, "patch_size"), _arg(net_cfg, "embed_dim")
    depth, window = _arg(net_cfg, "depth"), _arg(net_cfg, "window_size")
    hidden = int(dim * _arg(net_cfg, "mlp_ratio"))
    windowed = set(_arg(net_cfg, "window_block_indexes"))
    swiglu = "EVA02" in getattr(net_cfg._target_, "__name__", "")
    rel_pos = not swiglu and _arg(net_cfg, "use_rel_pos")
    grid = size // patch
    flops = 2.0 * grid * grid * dim * 3 * patch * patch
    for i in range(depth):
        if i in windowed and window > 0:
            side = math.ceil(grid / window) * window
            tokens, span, kside = side * side, window * window, window
        else:
            tokens, span, kside = grid * grid, grid * grid, grid
        flops += 2.0 * tokens * 4 * dim * dim  # qkv + proj
        flops += 2.0 * 2 * tokens * span * dim  # q.k and attn.v over all heads
        if rel_pos:
            flops += 2.0 * tokens * 2 * kside * dim  # rel_h, rel_w einsums
        flops += 2.0 * tokens * (3 if swiglu else 2) * dim * hidden
    return flops


def set_attn_impl(model, impl: str) -> None:
    """Switch every attention module of ``model`` (EVA-01 or EVA-02) to ``impl``."""
    for module in model.modules():
        if type(module).__name__ == "Attention" and hasattr(module, "attn_impl"):
            module.attn_impl = impl


def _errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = out.float() - ref
    return {
        "max_err": (diff.abs().max() / ref.abs().max()).item(),
        "rel_l2_err": (diff.norm() / ref.norm()).item(),
        "finite": bool(torch.isfinite(out).all()),
    }


# ----------------------------------------------------------------------------------- sections


def bench_vit(rec, args, model_name, configs, impls, ref_impl="plain"):
    """Time one ViT at several sizes: fp32 ``ref_impl`` (the reference) and bf16 per impl.

    Args:
        configs (list): (size, config path, overrides) per size; the net is built from the first
            and takes ``interp_type`` from each (so the 1536 run resizes tables as its config does).
        impls (list[str]): attention implementations timed under bf16 autocast.
    """
    from detectron2.config import instantiate

    device = args.device
    _, path0, over0 = configs[0]
    net_cfg = load(path0, over0).model.backbone.net
    net_args = inspect.signature(net_cfg._target_).parameters
    if "rel_pos_zero_init" in net_args:
        net_cfg.rel_pos_zero_init = False  # non-zero tables, so the bias is exercised
    torch.manual_seed(0)
    t = time.perf_counter()
    net = instantiate(net_cfg).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    rec.info(**{f"{model_name}_params": params, f"{model_name}_build_s": time.perf_counter() - t})
    repeat = args.repeat
    for size, path, over in configs:
        try:
            cfg = load(path, over)
            interp = (
                _arg(cfg.model.backbone.net, "interp_type") if "interp_type" in net_args else None
            )
            if interp is not None:
                for m in net.modules():
                    if hasattr(m, "interp_type"):
                        m.interp_type = interp
            flops = vit_flops(cfg.model.backbone.net, size)
            g = torch.Generator().manual_seed(size)
            x = torch.randn(1, 3, size, size, generator=g).to(device)
            key = next(iter(net.output_shape()))
            common = dict(model=model_name, size=size, tflop_per_img=flops / 1e12, interp=interp)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            set_attn_impl(net, ref_impl)
            with torch.no_grad():
                ref = net(x)[key].float()
                times = timed(lambda: net(x), device, max(1, repeat // 4))
            sec = statistics.median(times)
            rec.row(
                **common,
                precision="fp32",
                attn_impl=ref_impl,
                s_per_img=sec,
                img_per_s=1 / sec,
                tflops=flops / sec / 1e12,
                max_err=0.0,
                rel_l2_err=0.0,
            )
            base = None
            for impl in impls:
                try:
                    set_attn_impl(net, impl)
                    with torch.no_grad(), torch.autocast(torch.device(device).type, torch.bfloat16):
                        err = _errors(net(x)[key], ref)
                        times = timed(lambda: net(x), device, repeat)
                    sec = statistics.median(times)
                    base = base or sec
                    rec.row(
                        **common,
                        precision="bf16",
                        attn_impl=impl,
                        s_per_img=sec,
                        img_per_s=1 / sec,
                        tflops=flops / sec / 1e12,
                        peak_fraction=flops / sec / 1e12 / PEAK_BF16_TFLOPS,
                        speedup_vs_plain=base / sec if impls[0] == ref_impl else None,
                        **err,
                    )
                except Exception as e:  # one impl failing (e.g. out of memory) keeps the others
                    rec.row(**common, precision="bf16", attn_impl=impl, error=_short(e))
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
            del ref
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as e:  # e.g. the fp32 reference out of memory: the next size still runs
            rec.row(model=model_name, size=size, error=_short(e))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def section_backbone(rec, args):
    over = SMOKE_EVA01 if args.smoke else []
    small, large = (128, 160) if args.smoke else (1280, 1536)
    configs = [(small, EVA01, over), (large, EVA01_1536, over)]
    name = "EVA-01 tiny (smoke)" if args.smoke else "EVA-01 1B"
    bench_vit(rec, args, name, configs, ["plain", "sdpa", "blocked"])


def section_eva02(rec, args):
    over = SMOKE_VIT + ["model.backbone.square_pad=128"] if args.smoke else []
    size = 128 if args.smoke else 1536
    name = "EVA-02 tiny (smoke)" if args.smoke else "EVA-02 L"
    bench_vit(rec, args, name, [(size, EVA02_L, over)], ["plain", "sdpa"])


def section_detector(rec, args):
    import memory as bench_memory  # bench/memory.py
    import numpy as np
    from detectron2.config import LazyConfig

    from eva_det.demo import LazyPredictor
    from eva_det.engine.precision import inference_precision

    device = args.device
    over = EVA_PROTOCOL + [f"train.device={device}"]
    if args.smoke:
        over += SMOKE_EVA01 + SMOKE_DETECTOR
    size = 128 if args.smoke else 1280
    cfg = LazyConfig.apply_overrides(bench_memory.load_cfg(EVA01, size), over)
    torch.manual_seed(0)
    t = time.perf_counter()
    predictor = LazyPredictor(cfg, load_weights=False)
    rec.info(build_s=time.perf_counter() - t, config=EVA01, overrides=over)
    model = predictor.detector
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (size * 3 // 4, size, 3), dtype=np.uint8)
        for _ in range(args.images + 1)
    ]
    inputs = [predictor.preprocess(im) for im in images]
    # (precision, test.amp dtype, attn_impl, soft_nms_topk): eva_det's default in bf16 first (the
    # goal's figure), the official setting (fp32, plain attention), then fp16 and bf16 with
    # eva_det's opt-in cap of 100 detections per image (less mask-head work; not EVA's protocol)
    variants = [("bf16", "bfloat16", "auto", None), ("fp32", None, "plain", None)]
    if device.startswith("cuda"):
        variants += [("fp16", "float16", "auto", None), ("bf16", "bfloat16", "auto", 100)]
    for label, amp, impl, topk in variants:
        try:
            set_attn_impl(model, impl)
            model.roi_heads.soft_nms_params.topk = topk
            cfg.test.amp.enabled = amp is not None
            cfg.test.amp.dtype = amp or "bfloat16"
            dets = []

            def run(i):
                out = model.inference([inputs[i]], do_postprocess=False)[0]
                dets.append(len(out))

            with torch.no_grad(), inference_precision(cfg, model):
                run(0)  # warm-up
                sync(device)
                times = []
                for i in range(1, len(inputs)):
                    start = time.perf_counter()
                    run(i)
                    sync(device)
                    times.append(time.perf_counter() - start)
            sec = statistics.median(times)
            rec.row(
                image=f"{size}x{size * 3 // 4}",
                precision=label,
                attn_impl=impl,
                soft_nms_topk=topk,
                images=len(times),
                s_per_img=sec,
                img_per_s=1 / sec,
                dets_per_img=float(statistics.mean(dets[1:])),
            )
        except Exception as e:
            rec.row(precision=label, attn_impl=impl, soft_nms_topk=topk, error=_short(e))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def section_soft_nms(rec, args):
    import soft_nms as bench_soft_nms  # bench/soft_nms.py

    from eva_det.layers.soft_nms import batched_soft_nms
    from eva_det.utils.testing import soft_nms_sequential_reference

    proposals, classes = (50, 8) if args.smoke else (1000, 80)
    boxes, scores, idxs = bench_soft_nms.make_case(proposals, classes)
    kw = dict(method="linear", iou_threshold=0.6, sigma=0.5, min_score=1e-3)
    t = time.perf_counter()
    expected = soft_nms_sequential_reference(boxes, scores, idxs, **kw)
    rec.info(reference_cpu_s=time.perf_counter() - t)
    dev = [b.to(args.device) for b in (boxes, scores, idxs)]
    result = batched_soft_nms(*dev, **kw)
    max_diff, tie_swaps = bench_soft_nms.compare(result, expected)  # exits on a mismatch
    times = timed(lambda: batched_soft_nms(*dev, **kw), args.device, args.repeat * 2)
    rec.row(
        boxes=boxes.shape[0],
        kept=int(result[0].numel()),
        equal_to_reference=True,
        max_rel_score_diff=max_diff,
        tie_swaps=tie_swaps,
        ms_per_image=1e3 * statistics.median(times),
        best_ms=1e3 * min(times),
    )


def section_train_memory(rec, args):
    import memory as bench_memory  # bench/memory.py

    device = args.device
    sizes = (128,) if args.smoke else (1280, 1536)
    amp = torch.float16 if device.startswith("cuda") else torch.bfloat16
    for size in sizes:
        try:
            cfg = bench_memory.load_cfg(EVA01, size)
            if args.smoke:
                from detectron2.config import LazyConfig

                cfg = LazyConfig.apply_overrides(cfg, SMOKE_EVA01 + SMOKE_TRAIN)
            t = time.perf_counter()
            peak = bench_memory.measure_training(cfg, size, True, device, amp_dtype=amp)
            rec.row(
                size=size,
                amp=str(amp).replace("torch.", ""),
                checkpointing=True,
                peak_gb=peak / GB,
                peak_gib=peak / 2**30,
                measure=(
                    "torch.cuda.max_memory_allocated"
                    if device.startswith("cuda")
                    else "process peak RSS"
                ),
                seconds=time.perf_counter() - t,
            )
        except Exception as e:
            rec.row(size=size, error=_short(e))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


class _TestRecorder:
    """pytest plugin: one row per test as soon as it finishes (a timeout keeps the rows so far)."""

    def __init__(self, rec: "Recorder"):
        self.rec, self.counts = rec, {"passed": 0, "failed": 0, "skipped": 0}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.counts[report.outcome] += 1
            detail = "" if report.passed else str(report.longrepr).strip().splitlines()[-1][:300]
            self.rec.row(
                test=report.nodeid, outcome=report.outcome, seconds=report.duration, detail=detail
            )
            self.rec.info(**self.counts)


def cuda_test_files() -> list:
    """The test files that hold tests marked ``cuda`` (collecting only these is fast)."""
    out = []
    for folder, _, files in sorted(os.walk(os.path.join(REPO, "tests"))):
        for name in sorted(files):
            if name.startswith("test_") and name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    if "pytest.mark.cuda" in f.read():
                        out.append(os.path.relpath(path, REPO))
    return out


def section_cuda_tests(rec, args):
    import pytest

    files = cuda_test_files()
    plugin = _TestRecorder(rec)
    rec.info(files=" ".join(files), **plugin.counts)
    code = pytest.main(["-q", "-m", "cuda", "-p", "no:cacheprovider"] + files, plugins=[plugin])
    rec.info(pytest_exit_code=int(code))
    if code not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: exit code {int(code)}, counts {plugin.counts}")


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


SMOKE_LIMIT = 240  # seconds per section with --smoke (CPU time is ~10 s; slack for a loaded CPU)
# (name, function, time limit in seconds on the GPU)
SECTIONS = [
    ("backbone", section_backbone, 150),
    ("detector", section_detector, 120),
    ("soft_nms", section_soft_nms, 45),
    ("train_memory", section_train_memory, 120),
    ("eva02", section_eva02, 60),
    ("cuda_tests", section_cuda_tests, 90),
]


# ------------------------------------------------------------------------------------- driver


def environment(device: str) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpus": os.cpu_count(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            env["nvidia_smi"] = _short(e)
    try:
        import detectron2

        env["detectron2"] = detectron2.__version__
    except ImportError as e:
        env["detectron2"] = _short(e)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        env["commit"] = commit.stdout.strip() or "unknown (no git checkout)"
    except (OSError, subprocess.TimeoutExpired):
        env["commit"] = "unknown (no git)"
    return env


def evaluate_goals(sections: dict, smoke: bool) -> list:
    """Verdict per goal: "pass", "fail", "missing" (section or figure absent) or, for a smoke run,
    "n/a (smoke)"."""
    out = []
    for name, match, field, op, limit, text in GOALS:
        rows = sections.get(name, {}).get("rows", [])
        rows = [r for r in rows if all(r.get(k) == v for k, v in match.items()) and field in r]
        value = rows[0][field] if rows else None
        if smoke:
            verdict = "n/a (smoke)"
        elif value is None:
            verdict = "missing"
        else:
            verdict = "pass" if (value >= limit if op == ">=" else value <= limit) else "fail"
        out.append({"goal": text, "value": value, "limit": f"{op} {limit:g}", "verdict": verdict})
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.3f}"
    return "" if v is None else str(v)


def to_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# eva_det GPU check{' (SMOKE: CPU, tiny models)' if results['smoke'] else ''}", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- command: `{results['command']}`", "", "## Goals", ""]
    lines += ["| goal | value | limit | verdict |", "|---|---|---|---|"]
    for g in results["goals"]:
        lines.append(f"| {g['goal']} | {_cell(g['value'])} | {g['limit']} | {g['verdict']} |")
    for name, sec in results["sections"].items():
        lines += ["", f"## {name}: {sec['status']} ({sec.get('seconds', 0):.0f} s)", ""]
        if sec.get("error"):
            lines += ["```", sec["error"], "```", ""]
        if sec.get("info"):
            lines.append("- " + ", ".join(f"{k}: {_cell(v)}" for k, v in sec["info"].items()))
            lines.append("")
        rows = sec.get("rows", [])
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str) -> None:
    from eva_det.utils.atomic import atomic_write_text

    atomic_write_text(json.dumps(results, indent=1), os.path.join(out_dir, "gpu_check.json"))
    atomic_write_text(to_markdown(results), os.path.join(out_dir, "gpu_check.md"))


def run_sections(args) -> int:
    deadline = time.monotonic() + args.budget
    os.makedirs(args.out, exist_ok=True)
    results = {
        "smoke": args.smoke,
        "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:]),
        "environment": environment(args.device),
        "sections": {},
        "goals": [],
    }
    write_results(results, args.out)
    names = args.sections or [n for n, _, _ in SECTIONS]
    limits = {n: lim for n, _, lim in SECTIONS}
    log = open(os.path.join(args.out, "gpu_check.log"), "a")
    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    for name in names:
        left = deadline - time.monotonic()
        sec = {"status": "skipped: no time left", "rows": [], "info": {}}
        if left > 5:
            limit = min(SMOKE_LIMIT if args.smoke else limits[name], left)
            partial = os.path.join(tmp, name + ".json")
            cmd = [sys.executable, os.path.abspath(__file__), "--section", name, "--partial"]
            cmd += [partial, "--device", args.device, "--repeat", str(args.repeat)]
            cmd += ["--images", str(args.images)] + ["--smoke"] * args.smoke
            start = time.monotonic()
            print(f"[gpu_check] {name}: up to {limit:.0f} s", flush=True)
            log.write(f"===== {name}\n")
            log.flush()
            try:
                proc = subprocess.run(
                    cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                )
                sec["status"] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                sec["status"] = f"timeout after {limit:.0f} s"
            sec["seconds"] = time.monotonic() - start
            if os.path.exists(partial):
                with open(partial) as f:
                    sec.update(json.load(f))
            failed_rows = sum("error" in r for r in sec["rows"])
            if sec["status"] == "ok" and failed_rows:
                sec["status"] = f"errors in {failed_rows} of {len(sec['rows'])} rows"
            if sec["status"] != "ok":
                log.flush()
                sec["error"] = _log_tail(log.name, name)
        results["sections"][name] = sec
        results["goals"] = evaluate_goals(results["sections"], args.smoke)
        write_results(results, args.out)
        print(f"[gpu_check] {name}: {sec['status']} ({sec.get('seconds', 0):.0f} s)", flush=True)
    log.close()
    print(summary(results), flush=True)
    return 0 if all(s["status"] == "ok" for s in results["sections"].values()) else 1


def _log_tail(path: str, name: str, chars: int = 2000) -> str:
    with open(path, errors="replace") as f:
        text = f.read()
    return text[text.rfind(f"===== {name}\n") :][-chars:]


def summary(results: dict) -> str:
    """The few lines printed last (the device tool returns the end of the output)."""
    lines = [f"== gpu_check {results['environment']['date_utc']}, "]
    lines[0] += results["environment"].get("gpu", results["environment"]["device"])
    for name, sec in results["sections"].items():
        lines.append(f"{name:<13} {sec['status']}")
        for r in sec.get("rows", []):
            if "img_per_s" in r or "ms_per_image" in r or "peak_gb" in r:
                keys = ("model", "size", "image", "precision", "attn_impl")
                head = " ".join(str(r[k]) for k in keys if k in r)
                vals = ("img_per_s", "tflops", "max_err", "ms_per_image", "peak_gb", "dets_per_img")
                lines.append(
                    f"  {head}: " + ", ".join(f"{k} {_cell(r[k])}" for k in vals if k in r)
                )
    for g in results["goals"]:
        lines.append(f"goal {g['verdict']:<11} {_cell(g['value'])} ({g['limit']}): {g['goal']}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models: checks the script")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "output/gpu_check"))
    p.add_argument("--budget", type=float, default=None, help="seconds for all sections")
    p.add_argument("--sections", nargs="+", choices=[n for n, _, _ in SECTIONS])
    p.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls per measurement")
    p.add_argument("--images", type=int, default=None, help="timed detector images per variant")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section
    p.add_argument("--partial", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.budget = args.budget or (1200.0 if args.smoke else 420.0)
    args.repeat = args.repeat or (1 if args.smoke else 10)
    args.images = args.images or (1 if args.smoke else 8)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.section:
        if args.smoke:
            torch.set_num_threads(min(2, os.cpu_count() or 1))
        rec = Recorder(args.partial)
        try:
            dict((n, f) for n, f, _ in SECTIONS)[args.section](rec, args)
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 1
        # what the section measured is on disk already; leave without waiting for threads that
        # imported modules may have started (seen after pytest.main: the process did not end)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible to torch; use --smoke to check the script")
    return run_sections(args)


if __name__ == "__main__":
    sys.exit(main())
