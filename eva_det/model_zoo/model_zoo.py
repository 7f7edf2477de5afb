"""Look up released EVA / EVA-02 detectors and build them with their weights.

    from eva_det import model_zoo
    model_zoo.list_models()                       # names, see docs/MODEL_ZOO.md
    cfg = model_zoo.get_config("eva02_L_coco_bsl", trained=True)   # LazyConfig + eval flags
    model = model_zoo.get("eva02_L_coco_bsl", checkpoint="/data/eva02_L_coco_bsl.pth")
    im = model_zoo.get_inference_model("eva02_L_coco_bsl", overrides=["test.amp.enabled=True"])
    outputs = im(batched_inputs)                  # no_grad, test.amp, test.compile_backbone

Weights are downloaded once through the Hugging Face hub client into its shared cache
(``$HF_HOME/hub``, default ``~/.cache/huggingface/hub``; ``HF_ENDPOINT`` selects a mirror,
``HF_HUB_OFFLINE=1`` reads the cache only), see :mod:`eva_det.checkpoint.hub`. Without network
access, fill that cache elsewhere (``hf download REPO FILE``) or pass a downloaded file's path
(``checkpoint=`` here, ``train.init_checkpoint=`` on the command line).
"""

import difflib
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.utils.file_io import PathManager

from eva_det.checkpoint.hub import resolve_weights
from eva_det.config.load import load_config
from eva_det.config.paths import config_file
from eva_det.engine.build import InferenceModel, build_inference_model
from eva_det.engine.precision import precision_settings
from eva_det.errors import InputError

from .table import CHECKPOINTS, Checkpoint, Evaluation, checkpoints_by_name

__all__ = [
    "list_models",
    "get_checkpoint",
    "get_checkpoint_url",
    "get_evaluation",
    "get_eval_overrides",
    "get_config",
    "get",
    "get_inference_model",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

_FAMILIES = ("EVA-01", "EVA-02")


def list_models(family: Optional[str] = None) -> List[str]:
    """Names of the released checkpoints, in table order.

    Args:
        family (str or None): "EVA-01" or "EVA-02" to list one generation; None lists all.
    """
    if family is not None and family not in _FAMILIES:
        raise InputError(f"family must be one of {_FAMILIES} or None, got {family!r}")
    return [c.name for c in CHECKPOINTS if family is None or c.family == family]


def get_checkpoint(name: str) -> Checkpoint:
    """The table entry of ``name`` (see :class:`eva_det.model_zoo.table.Checkpoint`)."""
    table: Dict[str, Checkpoint] = checkpoints_by_name()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise InputError(
            f"Unknown EVA checkpoint {name!r}.{hint} Known: {', '.join(table)} (docs/MODEL_ZOO.md)."
        )
    return table[name]


def get_checkpoint_url(name: str) -> str:
    """Download URL of checkpoint ``name``."""
    return get_checkpoint(name).url


def get_evaluation(name: str, task: Optional[str] = None) -> Optional[Evaluation]:
    """The official evaluation run of ``name`` that reports ``task``.

    Args:
        name (str): checkpoint name.
        task (str or None): "bbox" or "segm"; None means the first published run.

    Returns:
        Evaluation or None: None for checkpoints without a published evaluation (the
        Objects365 inits), unless a task is asked for, which raises.
    """
    entry = get_checkpoint(name)
    if task is None:
        return entry.evaluations[0] if entry.evaluations else None
    for evaluation in entry.evaluations:
        if task in evaluation.tasks:
            return evaluation
    published = sorted({t for e in entry.evaluations for t in e.tasks})
    raise InputError(
        f"{name} has no published '{task}' evaluation (published tasks: {published or 'none'})"
    )


def get_eval_overrides(name: str, task: Optional[str] = None) -> List[str]:
    """The config overrides (``key=value``) of the official evaluation of ``name``.

    Args:
        name (str): checkpoint name.
        task (str or None): "bbox" or "segm" picks the run that reports it (some checkpoints are
            evaluated twice, with maskness only for masks); None means the first run.
    """
    evaluation = get_evaluation(name, task)
    return list(evaluation.overrides) if evaluation is not None else []


def resolve_checkpoint(path_or_url: str) -> str:
    """A local file for a checkpoint path, hub name or URL.

    Hub names (``hf://ORG/NAME/PATH``, ``timm/...``, model-zoo names) and huggingface.co URLs
    go through the Hugging Face hub client (:mod:`eva_det.checkpoint.hub`: shared cache,
    ``HF_ENDPOINT`` mirrors, ``HF_HUB_OFFLINE``); other URLs through detectron2's
    ``PathManager``.

    Raises:
        InputError: a hub file that cannot be had (the message names repository, file and
            fix), another URL's download failed (the message names the URL and how to use a
            file downloaded elsewhere), or a local path that does not exist.
    """
    weights = resolve_weights(path_or_url)
    if weights.hub is not None or os.path.isfile(weights.path):
        return weights.path
    is_url = "://" in path_or_url
    try:
        local = PathManager.get_local_path(path_or_url)
    except Exception as e:  # iopath raises URLError, HTTPError, OSError, ... depending on handler
        if not is_url:
            raise
        name = path_or_url.rsplit("/", 1)[-1]
        raise InputError(
            f"Could not download checkpoint {path_or_url} ({type(e).__name__}: {e}). Download "
            f"it on a machine with network access and pass the file instead: "
            f"eva_det.model_zoo.get(..., checkpoint='/path/to/{name}') or, on the command line, "
            f"train.init_checkpoint=/path/to/{name}."
        ) from None
    if not os.path.isfile(local):
        raise InputError(
            f"Checkpoint {path_or_url} not found"
            + (f" (resolved to {local})" if local != path_or_url else "")
            + ". Pass the path of a downloaded .pth file or a hub name (hf://ORG/NAME/PATH)."
        )
    return local


def get_config(
    name: str,
    trained: bool = False,
    checkpoint: Optional[str] = None,
    task: Optional[str] = None,
    overrides: Sequence[str] = (),
):
    """The LazyConfig of checkpoint ``name`` with its official evaluation flags applied.

    Args:
        name (str): checkpoint name (:func:`list_models`).
        trained (bool): set ``train.init_checkpoint`` to the checkpoint (``checkpoint`` if given,
            else its hub name ``hf://ORG/NAME/PATH``, downloaded when the model is loaded);
            otherwise leave the config's own value.
        checkpoint (str or None): local path, hub name or URL replacing the table's file.
        task (str or None): which official evaluation's flags to apply, see
            :func:`get_eval_overrides`.
        overrides (Sequence[str]): further ``key=value`` overrides, applied last.

    Returns:
        omegaconf.DictConfig: the loaded config.
    """
    entry = get_checkpoint(name)
    path = config_file(entry.config)
    opts = get_eval_overrides(name, task)
    if trained:
        opts.append(f"train.init_checkpoint={checkpoint or entry.hub_name}")
    # unknown keys and values of the wrong type are InputErrors naming them
    return load_config(os.fspath(path), opts + list(overrides))


def get_inference_model(
    name: str,
    trained: bool = True,
    device: str = "cpu",
    checkpoint: Optional[str] = None,
    task: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> InferenceModel:
    """The detector of checkpoint ``name`` as every tool runs it, with its weights if ``trained``.

    Built by :func:`eva_det.engine.build.build_inference_model`, as
    ``tools/lazyconfig_train_net.py --eval-only`` builds it: the EMA weights when the official
    evaluation uses them (``train.model_ema.use_ema_weights_for_eval_only``), TTA with
    ``test.aug.enabled``; calling the result runs a batch under ``test.amp`` /
    ``test.compile_backbone``.

    Args:
        name (str): checkpoint name (:func:`list_models`).
        trained (bool): load the released weights; False gives the randomly initialised model.
        device (str): where to put the model.
        checkpoint (str or None): local file, hub name or URL replacing the table's file.
        task (str or None): which official evaluation's flags to apply.
        overrides (Sequence[str]): further config overrides.

    Raises:
        InputError: an unknown name, a bad override, a hub file that cannot be had (offline and
            not cached, unknown file...), a missing checkpoint file or a failed download (the
            message says how to pass a local file); the checkpoint does not fit the model
            (``overrides`` with ``train.allow_checkpoint_mismatch=True`` loads it anyway) or
            pickles objects that are not loaded safely (see :mod:`eva_det.checkpoint.safe_load`).
    """
    cfg = get_config(name, trained=False, task=task, overrides=overrides)
    init = None
    if trained:
        # Before building the model: a failed download should not cost a 1B-parameter init.
        source = checkpoint or get_checkpoint(name).hub_name
        weights = resolve_weights(source)
        # a hub name stays a name (the checkpointer finds it cached and converts pretrained
        # backbones); other URLs are replaced by their downloaded file
        init = source if weights.hub is not None else resolve_checkpoint(source)
    if init is not None:
        cfg.train.init_checkpoint = init
    return build_inference_model(cfg, load_weights=init is not None, device=device)


def get(
    name: str,
    trained: bool = True,
    device: str = "cpu",
    checkpoint: Optional[str] = None,
    task: Optional[str] = None,
    overrides: Sequence[str] = (),
) -> torch.nn.Module:
    """The model of :func:`get_inference_model` as a plain module in eval mode.

    That is the detector (its TTA wrapper with ``test.aug.enabled``). ``test.amp`` and
    ``test.compile_backbone`` are settings of a call, not of a module: they apply when the
    :class:`~eva_det.engine.build.InferenceModel` of :func:`get_inference_model` is called
    (a warning says so when they are set here). Arguments and errors: see
    :func:`get_inference_model`.
    """
    built = get_inference_model(name, trained, device, checkpoint, task, overrides)
    settings = precision_settings(built.cfg)
    if settings["amp"]["enabled"] or settings["compile_backbone"]:
        logger.warning(
            "model_zoo.get returns a plain module, which runs in float32 without compiling: "
            "test.amp / test.compile_backbone apply when you call "
            "model_zoo.get_inference_model(...) instead."
        )
    return built.model
