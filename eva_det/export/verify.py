"""Run exported graphs (onnxruntime on the CPU, or TorchScript) and compare them with PyTorch.

Used by ``tools/export_model.py --verify``, the tests and ``bench/export_speed.py``. The
reference is the eager model before :func:`~eva_det.export.prepare.prepare_for_export`, so a
comparison checks the preparation too.

Tolerances (``docs/DEPLOY.md``): pyramid features within relative error 1e-4 (max absolute
difference over the largest reference magnitude, per level); detections: the same number, and
each reference detection has an exported one of the same class with box coordinates and score
within 1e-3.
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from .export import backbone_adapter, detector_adapter, normalize

__all__ = [
    "FEATURE_RTOL",
    "DETECTION_ATOL",
    "Comparison",
    "GraphRunner",
    "compare_detections",
    "compare_features",
    "reference_outputs",
    "verify_graph",
]

logger = logging.getLogger(__name__)

FEATURE_RTOL = 1e-4
DETECTION_ATOL = 1e-3


class GraphRunner:
    """Call an exported graph file with numpy / torch inputs; returns a list of numpy arrays.

    Args:
        path (str): a ``.onnx`` file (run by onnxruntime's CPUExecutionProvider) or a TorchScript
            file (``torch.jit.load``).
        threads (int): intra-op threads of the onnxruntime session (0: its default).
    """

    def __init__(self, path: str, threads: int = 0):
        self.path = path
        self.is_onnx = path.endswith(".onnx")
        if self.is_onnx:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
        else:
            self.module = torch.jit.load(path, map_location="cpu").eval()

    def __call__(self, *inputs: torch.Tensor) -> List[np.ndarray]:
        if self.is_onnx:
            feed = {n: x.numpy() for n, x in zip(self.input_names, inputs)}
            return list(self.session.run(None, feed))
        with torch.no_grad():
            return [o.numpy() for o in self.module(*inputs)]


def reference_outputs(model: nn.Module, kind: str, image: torch.Tensor) -> List[np.ndarray]:
    """Eager outputs of ``model`` in the exported graph's order.

    Args:
        model (nn.Module): the eager detector (eval mode).
        kind (str): "backbone" or "detector".
        image (Tensor): (3, S, S) pixel image.
    """
    with torch.no_grad():
        if kind == "backbone":
            batch = normalize(model, image)
            outputs = backbone_adapter(model, batch)(batch)
        else:
            outputs = detector_adapter(model, image)(image)
    return [o.numpy() for o in outputs]


@dataclass
class Comparison:
    """Result of one comparison.

    Attributes:
        ok (bool): within tolerance.
        max_error (float): features: the largest relative error over levels; detections: the
            largest box / score difference of matched detections (inf if unmatched).
        detail (str): one line for the log.
    """

    ok: bool
    max_error: float
    detail: str


def compare_features(
    ref: Sequence[np.ndarray], out: Sequence[np.ndarray], names: Sequence[str]
) -> Comparison:
    """Per-level relative error ``max|out - ref| / max|ref|`` against :data:`FEATURE_RTOL`."""
    errors: Dict[str, float] = {}
    for name, r, o in zip(names, ref, out):
        if r.shape != o.shape:
            return Comparison(False, float("inf"), f"{name}: shape {o.shape} != {r.shape}")
        scale = max(float(np.abs(r).max()), 1e-12)
        errors[name] = float(np.abs(o.astype(np.float64) - r).max()) / scale
    worst = max(errors.values())
    text = ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
    return Comparison(worst <= FEATURE_RTOL, worst, f"relative error {text}")


def compare_detections(
    ref: Sequence[np.ndarray], out: Sequence[np.ndarray], names: Sequence[str]
) -> Comparison:
    """Same detections: equal counts, and each reference (box, class, score) matched by an
    exported one of the same class within :data:`DETECTION_ATOL` (order may differ on ties).

    Args:
        ref, out: outputs in graph order; ``names`` says which is ``boxes``, ``classes``,
            ``scores`` (``masks`` are compared like boxes when present).
    """
    r = dict(zip(names, ref))
    o = dict(zip(names, out))
    n_ref, n_out = len(r["scores"]), len(o["scores"])
    if n_ref != n_out:
        return Comparison(False, float("inf"), f"{n_out} detections, PyTorch has {n_ref}")
    if n_ref == 0:
        return Comparison(True, 0.0, "0 detections in both")
    # (n_ref, n_out) worst difference of box coordinates and score, same-class pairs only
    diff = np.abs(r["boxes"][:, None, :] - o["boxes"][None, :, :]).max(-1)
    diff = np.maximum(diff, np.abs(r["scores"][:, None] - o["scores"][None, :]))
    diff = np.where(r["classes"][:, None] == o["classes"][None, :], diff, np.inf)
    match = diff.argmin(1)
    worst = float(diff[np.arange(n_ref), match].max())
    unique = len(set(match.tolist())) == n_ref
    ok = unique and worst <= DETECTION_ATOL
    detail = f"{n_ref} detections, worst box/score difference {worst:.1e}"
    if "masks" in r:
        mask_err = float(np.abs(r["masks"] - o["masks"][match]).max()) if ok else 0.0
        detail += f", mask probabilities {mask_err:.1e}"
        ok = ok and mask_err <= DETECTION_ATOL
    if not unique:
        detail += " (some detections match the same exported one)"
    return Comparison(ok, worst, detail)


def verify_graph(path: str, kind: str, names: Sequence[str], reference: nn.Module, image):
    """Run graph ``path`` and the eager ``reference`` on ``image`` and compare.

    Args:
        path (str): exported file.
        kind (str): "backbone" or "detector".
        names (Sequence[str]): the graph's output names.
        reference (nn.Module): the eager model (not prepared for export).
        image (Tensor): (3, S, S) pixel image, preferably not the one traced with.
    """
    ref = reference_outputs(reference, kind, image)
    runner = GraphRunner(path)
    out = runner(normalize(reference, image) if kind == "backbone" else image)
    compare = compare_features if kind == "backbone" else compare_detections
    result = compare(ref, out, names)
    log = logger.info if result.ok else logger.error
    status = "ok" if result.ok else "FAILED"
    log("Verified %s against PyTorch eager: %s (%s)", path, result.detail, status)
    return result
