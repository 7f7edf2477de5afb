#!/usr/bin/env python
"""Train or evaluate an eva_det LazyConfig model (detectron2's CLI).

    python tools/lazyconfig_train_net.py --config-file CFG [--eval-only] [--resume] \
        [--num-gpus N --num-machines M --machine-rank R --dist-url URL] [key=value ...]
"""

from eva_det.engine.launch import run_cli

if __name__ == "__main__":
    run_cli()
