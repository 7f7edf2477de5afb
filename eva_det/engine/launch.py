"""Entry point shared by ``tools/lazyconfig_train_net.py``: parse, configure, launch.

Inputs are checked before anything is built (:mod:`eva_det.engine.checks`: config file,
override keys and value types, dataset names and paths, ``train.init_checkpoint``); ``run_cli``
prints an :class:`eva_det.errors.InputError` as one message (exit code 2) instead of a traceback
(:func:`eva_det.errors.exit_on_input_error`), and with several processes checks once before
spawning. Ctrl-C during training stops after the iteration in progress with a checkpoint and
prints the ``--resume`` command (exit code 130, :mod:`eva_det.engine.interrupt`). A machine of
a multi-machine run first waits at most ``--dist-timeout`` seconds for the rendezvous host.
"""

import logging
import os
import signal
import socket
import time
from urllib.parse import urlparse

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.multiprocessing import ProcessExitedException

from eva_det.config.load import find_config_file, load_config
from eva_det.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, InputError, exit_on_input_error

from .build import build_inference_model
from .checks import check_inputs, explain_dataset_errors
from .interrupt import TrainingInterrupted, resume_command
from .train_loop import do_test, do_train

__all__ = [
    "DEFAULT_DIST_TIMEOUT",
    "DIST_TIMEOUT_ENV",
    "build_parser",
    "main",
    "split_cpu_threads",
    "run_cli",
    "wait_for_rendezvous",
]

logger = logging.getLogger(__name__)

#: Seconds a machine of a multi-machine run waits for the rendezvous host (``--dist-url``).
DEFAULT_DIST_TIMEOUT = 300.0
#: Environment variable giving the default of ``--dist-timeout``.
DIST_TIMEOUT_ENV = "EVA_DET_DIST_TIMEOUT"


def build_parser():
    """detectron2's ``default_argument_parser`` plus ``--dist-timeout``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --num-machines > 1: how long a machine of rank > 0 waits for the rendezvous "
        f"host of --dist-url before giving up (default: ${DIST_TIMEOUT_ENV} or "
        f"{DEFAULT_DIST_TIMEOUT:.0f})",
    )
    return parser


def main(args) -> dict:
    """Run training or ``--eval-only`` evaluation for parsed CLI ``args``."""
    import eva_det.data  # noqa: F401  (registers eva_det's datasets in every worker)

    given = args.config_file
    # a repository path (projects/...) from another directory: eva_det's config tree
    args.config_file = find_config_file(given)
    cfg = load_config(args.config_file, args.opts)  # unknown override keys are errors
    # dataset names / files, DETECTRON2_DATASETS, train.init_checkpoint
    check_inputs(cfg, eval_only=args.eval_only, resume=args.resume)
    default_setup(cfg, args)
    # eva_det's own INFO logs (progress, load reports) on the console and in log.txt
    setup_logger(
        cfg.train.output_dir,
        comm.get_rank(),
        name="eva_det",
        abbrev_name="eva_det",
        enable_propagation=True,
    )
    if comm.get_world_size() > 1 and not torch.cuda.is_available():
        logger.info(
            "%d CPU processes on this machine, %d thread(s) each",
            comm.get_local_size(),
            torch.get_num_threads(),
        )
    if args.config_file != given:
        logger.info(
            "Config %s is not under %s: using eva_det's copy %s",
            given,
            os.getcwd(),
            args.config_file,
        )
    with explain_dataset_errors(cfg, eval_only=args.eval_only):  # unknown ids, empty datasets
        if args.eval_only:
            # raw weights, or the checkpoint's EMA with
            # train.model_ema.use_ema_weights_for_eval_only; do_test adds TTA / test.amp
            return do_test(cfg, build_inference_model(cfg).detector)
        do_train(cfg, resume=args.resume, resume_hint=getattr(args, "resume_hint", None))
    return {}


def split_cpu_threads(processes: int) -> int:
    """Give each of ``processes`` CPU training processes on this machine its share of the cores.

    PyTorch starts every process with one thread per core, so N processes on a machine without
    CUDA would run N times as many threads as there are cores and slow each other down. Unless
    ``OMP_NUM_THREADS`` is set (then it is respected), each process gets
    ``cores // processes`` threads (at least 1), where cores are those this process may run on.
    With CUDA nothing changes.

    Returns:
        int: the number of intra-op threads this process now uses.
    """
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // max(1, processes))
    torch.set_num_threads(threads)
    return threads


def _process_main(args) -> dict:
    """``main`` in one of several processes: bad input and Ctrl-C become exit codes, which
    ``run_cli`` in the launching process turns into its own exit code."""
    split_cpu_threads(args.num_gpus)
    try:
        with exit_on_input_error(logging.getLogger("eva_det")):
            return main(args)
    except TrainingInterrupted as e:
        if comm.is_main_process():
            logging.getLogger("eva_det").error("%s", e)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        raise SystemExit(EXIT_INTERRUPTED) from None


def dist_timeout(args) -> float:
    """``--dist-timeout``, else ``$EVA_DET_DIST_TIMEOUT``, else the default (seconds > 0)."""
    value, source = args.dist_timeout, "--dist-timeout"
    if value is None:
        value, source = os.environ.get(DIST_TIMEOUT_ENV, DEFAULT_DIST_TIMEOUT), DIST_TIMEOUT_ENV
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise InputError(f"{source}={value}: give the rendezvous timeout in seconds (> 0).")
    return seconds


def wait_for_rendezvous(dist_url: str, timeout: float, poll: float = 1.0) -> None:
    """Wait until the rendezvous host of ``dist_url`` (``tcp://HOST:PORT``) accepts connections.

    PyTorch's TCPStore would retry for its 30-minute default; this gives up after ``timeout``
    seconds with an InputError naming the address. Other URL schemes are not checked.

    Args:
        dist_url (str): ``--dist-url``.
        timeout (float): seconds to keep trying.
        poll (float): seconds between attempts.
    """
    url = urlparse(dist_url or "")
    if url.scheme != "tcp":
        return
    host, port = url.hostname, url.port
    if not host or port is None:
        raise InputError(f"--dist-url {dist_url}: write it as tcp://HOST:PORT.")
    deadline = time.monotonic() + timeout
    error = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 5.0)):
                return
        except OSError as e:
            error = e
        time.sleep(max(0.0, min(poll, deadline - time.monotonic())))
    raise InputError(
        f"--dist-url {dist_url}: the rendezvous host did not answer within {timeout:g} s "
        f"({type(error).__name__}: {error}). Start the machine with --machine-rank 0 first, "
        f"check HOST and PORT (the rank-0 machine's address, a free port) and firewalls, or wait "
        f"longer with --dist-timeout SECONDS (or ${DIST_TIMEOUT_ENV})."
    )


def _log_instead_of_interrupt(signum, frame) -> None:
    logger.warning("Ctrl-C: the training processes stop after their current iteration.")


def run_cli(argv=None) -> None:
    """Parse the arguments and launch ``main`` on every process.

    Exit codes: 2 for bad input (one message, no traceback), 130 after Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    args.resume_hint = resume_command(argv)
    world_size = args.num_gpus * args.num_machines
    with exit_on_input_error(logger):
        try:
            if world_size > 1:  # fail once, before spawning processes
                import eva_det.data  # noqa: F401

                cfg = load_config(args.config_file, args.opts)
                check_inputs(cfg, eval_only=args.eval_only, resume=args.resume)
            if args.num_machines > 1 and args.machine_rank > 0:
                wait_for_rendezvous(args.dist_url, dist_timeout(args))
            if world_size > 1:
                previous = signal.signal(signal.SIGINT, _log_instead_of_interrupt)
                try:
                    launch(
                        _process_main,
                        args.num_gpus,
                        num_machines=args.num_machines,
                        machine_rank=args.machine_rank,
                        dist_url=args.dist_url,
                        args=(args,),
                    )
                finally:
                    signal.signal(signal.SIGINT, previous)
            else:
                main(args)
        except ProcessExitedException as e:
            if e.exit_code not in (EXIT_BAD_INPUT, EXIT_INTERRUPTED):
                raise
            raise SystemExit(e.exit_code) from None  # the process logged why
        except TrainingInterrupted as e:
            logger.error("%s", e)
            raise SystemExit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            logger.error(
                "Interrupted (Ctrl-C) outside the training iterations (while building, loading "
                "or evaluating). Checkpoints and results are written atomically, so no partial "
                "file is left: rerun the same command."
            )
            raise SystemExit(EXIT_INTERRUPTED) from None
