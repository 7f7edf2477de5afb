"""bench/shapes_main_job.py: what it reads from a run's log / metrics and the table it prints."""

import importlib.util
import json
import os

from helpers.shrink import REPO


def _bench():
    spec = importlib.util.spec_from_file_location(
        "eva_bench_main_job", os.path.join(REPO, "bench/shapes_main_job.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """[12/01 21:51:48] d2.engine.train_loop INFO: Starting training from iteration 0
[12/01 22:00:50] d2.engine.hooks INFO: Overall training speed: 898 iterations in 0:09:00
[12/01 22:00:50] d2.engine.hooks INFO: Total training time: 0:09:02 (0:00:02 on hooks)
[12/01 22:01:10] eva_det.engine.train_loop INFO: Evaluation took 19.75 s (inference and scoring)
"""


def test_reads_only_what_the_run_appended(tmp_path):
    bench = _bench()
    log = tmp_path / "log.txt"
    log.write_text(LOG.replace("0:09:02", "1:00:00"))  # an earlier run in the same folder
    tail = bench._Tail(str(log))
    with open(log, "a") as f:
        f.write(LOG)
    text = tail.read()
    assert bench.parse_train_seconds(text) == 9 * 60 + 2
    assert bench.parse_eval_seconds(text) == 19.75
    assert bench.parse_eval_seconds(text + text) == 39.5  # e.g. raw + EMA evaluation

    rows = [{"iteration": 0, "total_loss": 3.0}, {"iteration": 900, "bbox/AP": 61.0}]
    rows.append({"iteration": 900, "bbox/AP": 62.5, "segm/AP": 56.0, "bbox/AP50": 90.0})
    final = bench.parse_final_ap("\n".join(json.dumps(r) for r in rows))
    assert (final["bbox/AP"], final["segm/AP"], final["bbox/AP50"]) == (62.5, 56.0, 90.0)


def test_table_and_goal():
    bench = _bench()
    runs = [
        bench.Run(0, 500.0, 40.0, 61.0, 56.0, 85.0, 560.0),
        bench.Run(1, 520.0, 41.0, 63.0, 57.5, 86.0, 580.0),
        bench.Run(2, 510.0, 39.0, 62.0, 55.5, 84.0, 570.0),
    ]
    lines = bench.table(runs)
    assert lines[0].startswith("| seed | train s | eval s | box AP | mask AP | box AP50 |")
    assert lines[2] == "| 0 | 500 | 40 | 61.0 | 56.0 | 85.0 | 560 |"
    assert lines[5] == "| mean | 510 | 40 | 62.0 | 56.3 | 85.0 | 570 |"
    assert lines[6] == "| spread (max - min) | 20 | 2 | 2.0 | 2.0 | 2.0 | 20 |"
    assert bench.goal_lines(runs)[-1] == "Goal met: yes (3 seed(s))."

    runs[1].train_s = 570.0  # 570 + 41 > 600 s
    runs[2].mask_ap = 53.0  # mask spread 4.5, mean 55.5
    goal = bench.goal_lines(runs)
    assert "- every run train + eval <= 600 s: no (slowest 611 s)" in goal
    assert "- mask AP spread <= 3: no (4.5)" in goal
    assert "- mean mask AP >= 55: yes (55.5)" in goal
    assert goal[-1] == "Goal met: no (3 seed(s))."


def test_runs_the_readme_main_job_command():
    """The bench times exactly the README's main-job line (its second command)."""
    with open(os.path.join(REPO, "README.md")) as f:
        block = f.read().split("```bash\n", 1)[1].split("```", 1)[0]
    main_job = block.splitlines()[1].split()
    assert main_job[0] == "python"
    assert main_job[1:] == _bench().README_COMMAND
