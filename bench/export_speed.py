"""Benchmark: onnxruntime (CPU) speed of the exported detector against PyTorch eager.

For each model (random weights; no checkpoint or dataset needed) the whole Cascade Mask R-CNN is
exported to ONNX with :func:`eva_det.export.export_detector` (as ``tools/export_model.py``
does) and timed on the same synthetic (3, S, S) image, interleaved, ``--repeat`` times after one
warm-up each:

* ``eager``: the PyTorch model as eva_det runs it (default ``attn_impl``; on CPU float32 EVA-01
  uses the "blocked" kernel), through the same ``model.inference(do_postprocess=False)`` call
  the graph records;
* ``eager plain``: the same with ``attn_impl="plain"`` (the attention the graph contains);
* ``onnxruntime``: the exported graph, CPUExecutionProvider, ``--threads`` intra-op threads.

The ratio eager / onnxruntime (> 1: onnxruntime is faster) is printed per model; outputs are
checked equal (:func:`eva_det.export.verify.compare_detections`). Absolute times on a shared
core are unreliable; the ratio within one run is the figure to read.

* ``tiny``: projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py (256 px);
* ``B``: projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py (EVA-01 ViT-B, 1024 px);
* ``eva02_B``: projects/ViTDet/configs/eva2_mim_to_coco/
  eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py (EVA-02 B, 1024 px).

    taskset -c 1 python bench/export_speed.py --models tiny B --threads 1 --repeat 3
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from eva_det.engine.checks import load_config
from eva_det.export import build_export_model
from eva_det.export.export import detector_adapter, export_detector, sample_image
from eva_det.export.verify import GraphRunner, compare_detections

MODELS = {
    "tiny": "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py",
    "B": "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py",
    "eva02_B": "projects/ViTDet/configs/eva2_mim_to_coco/"
    "eva2_coco_cascade_mask_rcnn_vitdet_b_4attn_1024_lrd0p7.py",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "B"], choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (median)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for all models")
    return parser.parse_args()


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_model(name: str, threads: int, repeat: int, overrides) -> dict:
    cfg = load_config(MODELS[name], ["train.device=cpu"] + list(overrides))
    torch.manual_seed(0)
    model, eager = build_export_model(cfg, load_weights=False, keep_reference=True)
    plain = copy.deepcopy(eager)
    for m in plain.modules():
        if hasattr(m, "attn_impl"):
            m.attn_impl = "plain"
    size = cfg.model.backbone.square_pad
    image = sample_image(size, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        export_s, graph = _timed(
            lambda: export_detector(model, "onnx", os.path.join(tmp, "detector.onnx"), image)
        )
        runner = GraphRunner(graph.path, threads=threads)
        runs = {
            "eager": lambda: [o.numpy() for o in detector_adapter(eager, image)(image)],
            "eager plain": lambda: [o.numpy() for o in detector_adapter(plain, image)(image)],
            "onnxruntime": lambda: runner(image),
        }
        times = {k: [] for k in runs}
        outputs = {}
        with torch.no_grad():
            for k, fn in runs.items():  # warm-up
                outputs[k] = fn()
            for _ in range(repeat):
                for k, fn in runs.items():
                    times[k].append(_timed(fn)[0])
    check = compare_detections(outputs["eager"], outputs["onnxruntime"], graph.output_names)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "name": name,
        "size": size,
        "export_s": export_s,
        "median_s": med,
        "ratio": med["eager"] / med["onnxruntime"],
        "ratio_plain": med["eager plain"] / med["onnxruntime"],
        "check": check,
    }


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print("command: python " + " ".join([sys.argv[0]] + sys.argv[1:]))
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, affinity {sorted(os.sched_getaffinity(0))}, "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    import onnxruntime

    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"onnxruntime {onnxruntime.__version__}; date {date}")
    print()
    print(
        "| model | input | export s | eager s | eager plain s | onnxruntime s | eager / ort "
        "| eager plain / ort | outputs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name in args.models:
        r = bench_model(name, args.threads, args.repeat, args.overrides)
        m = r["median_s"]
        ok = ok and r["check"].ok
        print(
            f"| {name} | {r['size']} | {r['export_s']:.1f} | {m['eager']:.3f} | "
            f"{m['eager plain']:.3f} | {m['onnxruntime']:.3f} | {r['ratio']:.2f} | "
            f"{r['ratio_plain']:.2f} | {'equal' if r['check'].ok else 'DIFFER'}: "
            f"{r['check'].detail} |",
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
