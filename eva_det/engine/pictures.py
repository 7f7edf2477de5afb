"""Pictures of a finished training run, written into ``train.output_dir``.

* ``predictions.png``: a grid of the first ``num_images`` images of the config's first test
  dataset with the model's detections scoring >= ``score_thresh`` (masks, boxes and
  "class score%" labels drawn by detectron2's ``Visualizer``; class names from the dataset's
  metadata, see :func:`eva_det.data.metadata.dataset_metadata`), ``columns`` images per row.
* ``losses.png``: every ``loss_*`` term and ``total_loss`` of ``metrics.json`` against the
  iteration (matplotlib, Agg canvas, no pyplot state), the final box / mask AP in the title.

The model is drawn as trained (neither EMA weights nor test-time augmentation), without
autocast. Both files are written atomically. :class:`PicturesHook` writes them after the last
iteration (after the final evaluation and metrics.json flush; not when training stopped early),
on the main process. ``train.pictures`` (``configs/common/train.py``):

* ``enabled`` (bool): write the pictures;
* ``num_images`` (int): images in the grid (fewer if the dataset is smaller);
* ``columns`` (int): images per grid row;
* ``score_thresh`` (float): lowest score drawn;
* ``scale`` (float): size of each drawn image relative to the dataset image.
"""

import io
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import HookBase
from detectron2.utils import comm

from eva_det.data.metadata import dataset_metadata
from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_write_bytes
from eva_det.utils.modules import unwrap_ddp
from eva_det.utils.sections import read_section

__all__ = [
    "LOSSES_FILE",
    "PICTURES_DEFAULTS",
    "PREDICTIONS_FILE",
    "PicturesHook",
    "draw_prediction_grid",
    "loss_plot_title",
    "pictures_config",
    "plot_losses",
    "write_pictures",
]

logger = logging.getLogger(__name__)

PICTURES_DEFAULTS = dict(enabled=True, num_images=8, columns=4, score_thresh=0.5, scale=1.0)
PREDICTIONS_FILE = "predictions.png"
LOSSES_FILE = "losses.png"


def pictures_config(cfg) -> dict:
    """``cfg.train.pictures`` as a validated dict, defaults for absent keys."""
    out = read_section(cfg, "train.pictures", PICTURES_DEFAULTS)
    for key in ("num_images", "columns"):
        if int(out[key]) < 1:
            raise InputError(f"train.pictures.{key}={out[key]} must be >= 1.")
        out[key] = int(out[key])
    if not float(out["scale"]) > 0:
        raise InputError(f"train.pictures.scale={out['scale']} must be > 0.")
    out["score_thresh"], out["scale"] = float(out["score_thresh"]), float(out["scale"])
    out["enabled"] = bool(out["enabled"])
    return out


def _png_bytes(image_rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _grid(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile (h, w, 3) uint8 images row by row into cells of the largest size (white padding)."""
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    grid = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * cell_h : r * cell_h + im.shape[0], c * cell_w : c * cell_w + im.shape[1]] = im
    return grid


def draw_prediction_grid(
    model: torch.nn.Module, cfg, settings: Optional[dict] = None
) -> Tuple[np.ndarray, List[List[str]]]:
    """Predict on the first images of the config's first test dataset and tile the drawings.

    Args:
        model (nn.Module): the detector (a DDP wrapper is unwrapped); run in eval mode without
            gradients, its train / eval mode is restored afterwards.
        cfg: LazyConfig with ``dataloader.test`` (``dataset.names``, ``mapper``).
        settings (dict or None): :func:`pictures_config` values; None reads them from ``cfg``.

    Returns:
        np.ndarray: (rows * cell_h, columns * cell_w, 3) uint8 RGB grid, cells as large as the
        largest drawn image (image size x ``scale``).
        list[list[str]]: the labels drawn on each image, in grid order.
    """
    from eva_det.data.metadata import test_dataset_name
    from eva_det.utils.visualize import draw_instances_with_labels, filter_instances

    settings = settings or pictures_config(cfg)
    name = test_dataset_name(cfg)
    if name is None:
        raise InputError("draw_prediction_grid needs dataloader.test.dataset.names.")
    dicts = DatasetCatalog.get(name)[: settings["num_images"]]
    if not dicts:
        raise InputError(f"Dataset {name!r} has no images to draw.")
    metadata = dataset_metadata(name)
    mapper = instantiate(cfg.dataloader.test.mapper)
    detector = unwrap_ddp(model)
    was_training = detector.training
    drawings, labels = [], []
    detector.eval()
    try:
        for record in dicts:
            with torch.no_grad():
                output = detector([mapper(dict(record))])[0]
            instances = filter_instances(output["instances"], settings["score_thresh"])
            image = read_image(record["file_name"], format="RGB")
            drawn, drawn_labels = draw_instances_with_labels(
                image, instances, metadata, scale=settings["scale"]
            )
            drawings.append(drawn)
            labels.append(drawn_labels)
    finally:
        detector.train(was_training)
    return _grid(drawings, settings["columns"]), labels


def _final_ap(rows: Sequence[dict]) -> Dict[str, float]:
    evaluated = [r for r in rows if "bbox/AP" in r or "segm/AP" in r]
    if not evaluated:
        return {}
    last = evaluated[-1]
    return {k: float(last[k]) for k in ("bbox/AP", "segm/AP") if k in last}


def loss_plot_title(ap: Dict[str, float], title: str = "") -> str:
    """E.g. "seed0: final box AP 61.2, mask AP 55.5" (NaN AP: the model detected nothing)."""
    names = {"bbox/AP": "box AP", "segm/AP": "mask AP"}
    shown = ", ".join(
        f"{names[k]} {v:.1f}" if math.isfinite(v) else f"{names[k]} n/a (no detections)"
        for k, v in ap.items()
    )
    shown = shown or "not evaluated"
    return f"{title}: final {shown}" if title else f"final {shown}"


def plot_losses(metrics_file: str, title: str = "") -> Tuple[bytes, Dict[str, float]]:
    """PNG of the training losses in ``metrics_file`` with the final AP in the title.

    Args:
        metrics_file (str): detectron2's metrics.json (one json object per line).
        title (str): text in front of the AP, e.g. the run's folder name.

    Returns:
        bytes: the PNG file (1000 x 500 px).
        dict: the final ``bbox/AP`` / ``segm/AP`` shown in the title (empty without evaluation).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with open(metrics_file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train_rows = [r for r in rows if "total_loss" in r]
    keys = ["total_loss"] + sorted({k for r in train_rows for k in r if k.startswith("loss_")})
    ap = _final_ap(rows)
    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for key in keys:
        points = [(r["iteration"], r[key]) for r in train_rows if key in r]
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, label=key, linewidth=2.0 if key == "total_loss" else 1.0)
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if train_rows:
        axes.legend(fontsize=7, ncol=2, loc="best")
    axes.set_title(loss_plot_title(ap, title))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue(), ap


def write_pictures(cfg, model: torch.nn.Module, output_dir: Optional[str] = None) -> List[str]:
    """Write ``predictions.png`` and ``losses.png`` into ``output_dir``; returns their paths.

    Args:
        cfg: the run's LazyConfig (``train.pictures``, ``dataloader.test``).
        model (nn.Module): the trained detector.
        output_dir (str or None): None means ``cfg.train.output_dir``; the loss plot is skipped
            (with a warning) when it holds no metrics.json.
    """
    settings = pictures_config(cfg)
    output_dir = output_dir or cfg.train.output_dir
    written = []
    grid, labels = draw_prediction_grid(model, cfg, settings)
    path = os.path.join(output_dir, PREDICTIONS_FILE)
    atomic_write_bytes(_png_bytes(grid), path)
    written.append(path)
    logger.info("Wrote %s (%d images, %d detections)", path, len(labels), sum(map(len, labels)))
    metrics_file = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics_file):
        png, _ = plot_losses(metrics_file, title=os.path.basename(os.path.normpath(output_dir)))
        path = os.path.join(output_dir, LOSSES_FILE)
        atomic_write_bytes(png, path)
        written.append(path)
        logger.info("Wrote %s", path)
    else:
        logger.warning("No %s: the loss plot is not written.", metrics_file)
    return written


class PicturesHook(HookBase):
    """Calls :func:`write_pictures` after the last training iteration (main process only).

    Register it after the evaluation hook and the metrics writer, so that metrics.json holds
    the final AP when the loss plot is drawn.
    """

    def __init__(self, cfg, model: torch.nn.Module):
        """
        Args:
            cfg: the run's LazyConfig.
            model (nn.Module): the model being trained (possibly DDP-wrapped).
        """
        pictures_config(cfg)  # bad settings fail before training, not after it
        self._cfg = cfg
        self._model = model

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter or not comm.is_main_process():
            return  # training stopped early (an exception is propagating), or another rank
        try:
            write_pictures(self._cfg, self._model)
        except Exception:  # the trained weights and metrics are already saved: keep them
            logger.exception("Writing the training pictures failed (training results are kept)")
