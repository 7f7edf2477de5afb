#!/usr/bin/env python
"""Time the README's main job (train + evaluate the tiny EVA on shapes) and report its AP.

Runs exactly the README command in a subprocess (dataset generation, if the dataset is missing,
is timed separately first), then reads box / mask AP from the run's metrics.json and prints them
against the goal (box AP >= 50, mask AP >= 45 within 10 minutes of training + evaluation).

    python bench/shapes_main_job.py [--output-dir output/shapes_tiny] [key=value overrides]
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output-dir", default="output/shapes_tiny_bench")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra key=value config overrides")
    args = p.parse_args()

    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from eva_det.data import ensure_shapes as e; e('shapes_train'); e('shapes_val')",
        ],
        cwd=REPO,
        check=True,
    )
    gen_s = time.perf_counter() - t0

    cmd = [
        sys.executable,
        "tools/lazyconfig_train_net.py",
        "--config-file",
        CONFIG,
        f"train.output_dir={args.output_dir}",
    ] + args.opts
    print(
        "# reproduce: python bench/shapes_main_job.py "
        + " ".join([f"--output-dir {args.output_dir}"] + args.opts)
    )
    t1 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    job_s = time.perf_counter() - t1

    with open(os.path.join(REPO, args.output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    final = [r for r in rows if "bbox/AP" in r][-1]
    iters = max(r.get("iteration", 0) for r in rows) + 1
    box, mask = final["bbox/AP"], final.get("segm/AP", float("nan"))
    print("| dataset generation s | train + eval s | iterations | box AP | mask AP | goal met |")
    print("|---|---|---|---|---|---|")
    ok = job_s <= 600 and box >= 50 and mask >= 45
    print(
        f"| {gen_s:.0f} | {job_s:.0f} | {iters} | {box:.1f} | {mask:.1f} | "
        f"{'yes' if ok else 'no'} (box >= 50, mask >= 45, <= 600 s) |"
    )


if __name__ == "__main__":
    main()
