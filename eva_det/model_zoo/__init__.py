"""Released EVA / EVA-02 detection checkpoints: table, configs, weights, docs.

See :mod:`eva_det.model_zoo.model_zoo` for the API and ``docs/MODEL_ZOO.md`` for the list.
"""

from .doc import render_model_zoo_markdown
from .model_zoo import (
    get,
    get_checkpoint,
    get_checkpoint_url,
    get_config,
    get_eval_overrides,
    get_evaluation,
    get_inference_model,
    list_models,
    resolve_checkpoint,
)
from .table import CHECKPOINTS, Checkpoint, Evaluation

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "Evaluation",
    "get",
    "get_checkpoint",
    "get_checkpoint_url",
    "get_config",
    "get_eval_overrides",
    "get_evaluation",
    "get_inference_model",
    "list_models",
    "render_model_zoo_markdown",
    "resolve_checkpoint",
]
