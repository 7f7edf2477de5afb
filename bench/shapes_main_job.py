#!/usr/bin/env python
"""Run the README's main job once per seed and print its times and AP as a markdown table.

    python bench/shapes_main_job.py --seeds 3 [--output-dir output/shapes_main_job] [key=value ...]

First the shapes dataset is generated if it is missing (timed on its own, so that no seed pays
for it). Then, for each seed S in 0 .. N-1, the README command

    python tools/lazyconfig_train_net.py --num-gpus 2 \\
        --config-file projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py

runs verbatim in a subprocess with only ``train.seed=S train.output_dir=OUT/seedS`` appended
(plus any ``key=value`` given here, e.g. ``train.max_iter=5`` for a smoke test; the table then
says that it is not the README job). ``train.seed`` seeds the weights, the sampler (data order)
and the data-loader workers, so two seeds differ and a seed repeats its data order.

Per run, read from what the run wrote (only the part written by this run):

* train s: detectron2's "Total training time" in ``log.txt`` (the iterations and the hooks run
  between them, e.g. checkpoints; without the final evaluation);
* eval s: eva_det's "Evaluation took X s" in ``log.txt`` (inference and COCO scoring);
* box AP, mask AP, box AP50: the last evaluation row of ``metrics.json``;
* wall s: the whole command, start-up and pictures included (for information).

Then mean and spread (max - min) rows, and whether the goal is met: every run's train + eval
<= 600 s, mean box AP >= 60, mean mask AP >= 55, box and mask AP spreads <= 3.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_COMMAND = [
    "tools/lazyconfig_train_net.py",
    "--num-gpus",
    "2",
    "--config-file",
    "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py",
]
GOAL = dict(max_seconds=600.0, box_ap=60.0, mask_ap=55.0, max_spread=3.0)

_TRAIN_TIME = re.compile(r"Total training time: (\d+):(\d\d):(\d\d)")
_EVAL_TIME = re.compile(r"Evaluation took ([0-9.]+) s")


@dataclass
class Run:
    """One seed's result (seconds and AP in percent)."""

    seed: int
    train_s: float
    eval_s: float
    box_ap: float
    mask_ap: float
    box_ap50: float
    wall_s: float


class _Tail:
    """What a run appends to a file that may already exist (detectron2 appends to log.txt)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.isfile(path) else 0

    def read(self) -> str:
        if not os.path.isfile(self.path):
            raise SystemExit(f"{self.path} was not written: the run failed (see its output)")
        with open(self.path) as f:
            f.seek(self.offset)
            return f.read()


def parse_train_seconds(log_text: str) -> float:
    """Seconds of detectron2's last "Total training time: H:MM:SS" line in ``log_text``."""
    found = _TRAIN_TIME.findall(log_text)
    if not found:
        raise SystemExit("no 'Total training time' in log.txt: training did not finish")
    h, m, s = (int(v) for v in found[-1])
    return float(datetime.timedelta(hours=h, minutes=m, seconds=s).total_seconds())


def parse_eval_seconds(log_text: str) -> float:
    """Sum of the "Evaluation took X s" lines in ``log_text`` (one per evaluation)."""
    found = _EVAL_TIME.findall(log_text)
    if not found:
        raise SystemExit("no 'Evaluation took' in log.txt: the run did not evaluate")
    return sum(float(v) for v in found)


def parse_final_ap(metrics_text: str) -> dict:
    """The last metrics.json row holding ``bbox/AP``."""
    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    evaluated = [r for r in rows if "bbox/AP" in r]
    if not evaluated:
        raise SystemExit("no bbox/AP in metrics.json: the run did not evaluate")
    return evaluated[-1]


def run_seed(seed: int, output_dir: str, extra: Sequence[str]) -> Run:
    """Run the README command for ``seed`` into ``output_dir`` and read its results."""
    log = _Tail(os.path.join(output_dir, "log.txt"))
    metrics = _Tail(os.path.join(output_dir, "metrics.json"))
    cmd = (
        [sys.executable] + README_COMMAND + [f"train.seed={seed}", f"train.output_dir={output_dir}"]
    )
    cmd += list(extra)
    print(f"# seed {seed}: python {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    print(f"# seed {seed} done in {wall:.0f} s; load average now {_load()}", flush=True)
    log_text = log.read()
    final = parse_final_ap(metrics.read())
    return Run(
        seed=seed,
        train_s=parse_train_seconds(log_text),
        eval_s=parse_eval_seconds(log_text),
        box_ap=float(final["bbox/AP"]),
        mask_ap=float(final.get("segm/AP", float("nan"))),
        box_ap50=float(final.get("bbox/AP50", float("nan"))),
        wall_s=wall,
    )


def _mean(runs: Sequence[Run], key: str) -> float:
    return sum(getattr(r, key) for r in runs) / len(runs)


def _spread(runs: Sequence[Run], key: str) -> float:
    return max(getattr(r, key) for r in runs) - min(getattr(r, key) for r in runs)


def table(runs: Sequence[Run]) -> List[str]:
    """Markdown lines: one row per run, then mean and spread (max - min) rows."""
    fields = ["train_s", "eval_s", "box_ap", "mask_ap", "box_ap50", "wall_s"]
    formats = ["{:.0f}", "{:.0f}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.0f}"]
    lines = [
        "| seed | train s | eval s | box AP | mask AP | box AP50 | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(str(r.seed), [getattr(r, k) for k in fields]) for r in runs]
    rows.append(("mean", [_mean(runs, k) for k in fields]))
    rows.append(("spread (max - min)", [_spread(runs, k) for k in fields]))
    for label, values in rows:
        cells = [f.format(v) for f, v in zip(formats, values)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def goal_lines(runs: Sequence[Run]) -> List[str]:
    """One line per goal criterion (met or not, with the value) and the verdict."""
    slowest = max(r.train_s + r.eval_s for r in runs)
    limit, spread_limit = GOAL["max_seconds"], GOAL["max_spread"]
    checks = [
        (f"every run train + eval <= {limit:.0f} s", slowest <= limit, f"slowest {slowest:.0f} s")
    ]
    for key, name in (("box_ap", "box AP"), ("mask_ap", "mask AP")):
        mean = _mean(runs, key)
        checks.append((f"mean {name} >= {GOAL[key]:.0f}", mean >= GOAL[key], f"{mean:.1f}"))
    for key, name in (("box_ap", "box AP"), ("mask_ap", "mask AP")):
        spread = _spread(runs, key)
        checks.append(
            (f"{name} spread <= {spread_limit:.0f}", spread <= spread_limit, f"{spread:.1f}")
        )
    lines = [f"- {name}: {'yes' if ok else 'no'} ({value})" for name, ok, value in checks]
    met = all(ok for _, ok, _ in checks)
    lines.append(f"Goal met: {'yes' if met else 'no'} ({len(runs)} seed(s)).")
    return lines


def generate_dataset() -> float:
    """Generate shapes_train / shapes_val if missing (as the first run would); seconds taken."""
    start = time.perf_counter()
    code = "from eva_det.data import ensure_shapes as e; e('shapes_train'); e('shapes_val')"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> List[Run]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds: 0 .. N-1 (default 3)")
    p.add_argument("--output-dir", default="output/shapes_main_job", help="runs go to DIR/seedS")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra key=value overrides (not README)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")

    load_before = _load()
    gen_s = generate_dataset()
    runs = [
        run_seed(seed, os.path.join(args.output_dir, f"seed{seed}"), args.opts)
        for seed in range(args.seeds)
    ]
    print()
    print(
        f"Main job, {datetime.date.today()}, {os.cpu_count()} CPU(s), load average before "
        f"starting {load_before}; dataset generation {gen_s:.0f} s (first use only)."
    )
    if args.opts:
        print(f"NOT the README job: extra overrides {' '.join(args.opts)}")
    print()
    print("\n".join(table(runs)))
    print()
    print("\n".join(goal_lines(runs)))
    return runs


def _load() -> str:
    """The 1 / 5 / 15 minute load averages (runnable processes), e.g. "2.01 / 1.50 / 0.90"."""
    if not hasattr(os, "getloadavg"):
        return "unknown"
    return " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


if __name__ == "__main__":
    main()
