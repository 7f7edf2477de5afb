"""Export an eva_det detector, or its backbone + simple feature pyramid, to ONNX or TorchScript.

Both go through detectron2's export conventions: the model is wrapped in
``detectron2.export.TracingAdapter`` (rich inputs / outputs flattened to tuples of tensors) and
traced once at the config's fixed input size (``model.backbone.square_pad``) after
:func:`eva_det.export.prepare.prepare_for_export` fixed the position tables. ONNX uses PyTorch's
TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), as detectron2's
``tools/deploy/export_model.py`` does.

Graphs (``S`` = ``square_pad``):

* ``backbone``: input ``image`` (1, 3, S, S) float32, already normalised
  (``(pixels - model.pixel_mean) / model.pixel_std``, padded with zeros to S x S); outputs the
  pyramid levels ``p2`` ... ``p6`` (1, C, S/4, S/4) ... (1, C, S/64, S/64).
* ``detector``: input ``image`` (3, S, S) float32 pixels in ``model.input_format`` order, the
  image resized by the test transform and padded at the bottom / right to S x S; outputs
  ``boxes`` (N, 4) XYXY in input pixels, ``classes`` (N,) int64, ``masks`` (N, 1, M, M) mask
  probabilities inside each box (``detector_postprocess`` / ``paste_masks_in_image`` of
  detectron2 turn them into image masks), ``scores`` (N,), ``image_size`` (2,). This is the
  output of ``model.inference(..., do_postprocess=False)``, as detectron2 exports it.

Inference options decide what can be exported (:func:`check_exportable`): soft-NMS
(``model.roi_heads.use_soft_nms``) is a loop whose length depends on the data, so tracing would
record one image's iterations; TTA (``test.aug``) runs the model several times in Python. Both
are refused with an :class:`~eva_det.errors.InputError`. Maskness rescoring
(``maskness_thresh``) and the score-threshold override are tensor operations / constants and are
in the graph. Export is in float32 (``test.amp`` and ``test.compile_backbone`` do not apply).
"""

import copy
import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.export import TracingAdapter
from torch import nn

from eva_det.engine.build import build_inference_model
from eva_det.errors import InputError
from eva_det.utils.atomic import atomic_write_bytes, atomic_write_text

from .prepare import export_input_size, prepare_for_export

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "ExportedGraph",
    "build_export_model",
    "check_exportable",
    "export_backbone",
    "export_detector",
    "export_model",
    "sample_image",
]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
#: ONNX opset of the exported graphs: 16 is the first with RoiAlign's half-pixel (``aligned``)
#: coordinates, and the last before LayerNormalization becomes one op (which TensorRT's parser
#: lists as unsupported before TensorRT 8.6); at 16 layer norms are ReduceMean / Sub / Pow / Sqrt.
ONNX_OPSET = 16
#: Graph output names of the ``Instances`` fields (flattened in sorted field order).
FIELD_NAMES = {"pred_boxes": "boxes", "pred_classes": "classes", "pred_masks": "masks"}

#: What the graphs leave out, stated by the tool and in docs/DEPLOY.md.
NOT_EXPORTED = (
    "resizing to the test size and padding to square_pad (do them before the graph)",
    "detector_postprocess: scaling boxes to the original image and pasting masks",
    "float16 / bfloat16 autocast (test.amp): graphs are float32",
)


@dataclass
class ExportedGraph:
    """One written graph.

    Attributes:
        path (str): the file.
        kind (str): "backbone" or "detector".
        format (str): "onnx" or "torchscript".
        input_names (list[str]), input_shapes (list[list[int]]): the graph's inputs.
        output_names (list[str]): its outputs, in order.
        ops (list[str]): ONNX operator types in the graph (ONNX only).
        verification (dict or None): :class:`eva_det.export.verify.Comparison` as a dict.
    """

    path: str
    kind: str
    format: str
    input_names: List[str]
    input_shapes: List[List[int]]
    output_names: List[str]
    ops: List[str] = field(default_factory=list)
    verification: Optional[dict] = None


def _roi_heads_cfg(cfg):
    return cfg.model.get("roi_heads", None) or {}


def check_exportable(cfg, fmt: str) -> None:
    """Raise InputError for a format or a config option that cannot be exported.

    Args:
        cfg: the LazyConfig (``model``, ``test``).
        fmt (str): "onnx" or "torchscript".
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: not a supported format; use {' or '.join(FORMATS)}.")
    if bool(_roi_heads_cfg(cfg).get("use_soft_nms", False)):
        raise InputError(
            "model.roi_heads.use_soft_nms=True cannot be exported: soft-NMS is a loop whose "
            "number of steps depends on the image, and a traced graph would replay one image's "
            "steps. Export with model.roi_heads.use_soft_nms=False (per-class NMS, in the graph) "
            "and, if you need soft-NMS, run the PyTorch model (docs/DEPLOY.md)."
        )
    aug = cfg.get("test", {}).get("aug", {}) if "test" in cfg else {}
    if aug and bool(aug.get("enabled", False)):
        raise InputError(
            "test.aug.enabled=True (test-time augmentation) cannot be exported: it runs the "
            "model several times in Python. Export with test.aug.enabled=False."
        )
    size = int(cfg.model.backbone.get("square_pad", 0) or 0)
    if size <= 0:
        raise InputError(
            "model.backbone.square_pad is 0 or absent: export needs the fixed square input size "
            "of the eva_det recipes; set model.backbone.square_pad=SIZE."
        )


def build_export_model(cfg, load_weights: bool = True, keep_reference: bool = False):
    """The config's detector on the CPU in eval mode, prepared for export.

    Built and loaded by :func:`eva_det.engine.build.build_inference_model` (``cfg.model``,
    ``cfg.train.init_checkpoint`` with EMA weights where the config uses them), then
    :func:`~eva_det.export.prepare.prepare_for_export`.

    Args:
        cfg: the LazyConfig; ``train.device`` is set to "cpu".
        load_weights (bool): load ``train.init_checkpoint`` (False: random initialisation).
        keep_reference (bool): also return an unprepared copy (the eager reference).

    Returns:
        nn.Module, or (prepared model, eager reference) with ``keep_reference``.
    """
    cfg.train.device = "cpu"
    model = build_inference_model(cfg, load_weights=load_weights).detector.eval()
    reference = copy.deepcopy(model) if keep_reference else None
    prepare_for_export(model)
    return (model, reference) if keep_reference else model


def sample_image(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A (channels, size, size) float32 image of uniform pixels in [0, 255) for tracing."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(channels, size, size, generator=gen) * 255.0


def _detector_inference(model, inputs):
    """detectron2's export inference: no postprocess, so masks stay per-box probabilities."""
    instances = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": instances}]


def detector_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """``TracingAdapter`` of the whole detector for one (3, S, S) image."""
    return TracingAdapter(model, [{"image": image}], _detector_inference)


def detector_output_names(model: nn.Module, image: torch.Tensor) -> List[str]:
    """Names of the detector graph's outputs, in TracingAdapter's order: the ``Instances``
    fields sorted by name (``pred_boxes`` -> ``boxes``, ...), then ``image_size``."""
    with torch.no_grad():
        instances = _detector_inference(model, [{"image": image}])[0]["instances"]
    fields = sorted(instances.get_fields())
    return [FIELD_NAMES.get(f, f) for f in fields] + ["image_size"]


def backbone_adapter(model: nn.Module, image: torch.Tensor) -> TracingAdapter:
    """``TracingAdapter`` of ``model.backbone`` for a normalised (1, 3, S, S) batch."""
    return TracingAdapter(model.backbone, image)


def normalize(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """The backbone input of a (3, S, S) pixel image: ``(image - mean) / std``, (1, 3, S, S)."""
    return ((image - model.pixel_mean) / model.pixel_std).unsqueeze(0)


def _serialize(adapter: TracingAdapter, inputs, fmt: str, input_names, output_names) -> bytes:
    buf = io.BytesIO()
    if fmt == "torchscript":
        traced = torch.jit.trace(adapter, inputs, check_trace=False)
        torch.jit.save(traced, buf)
    else:
        torch.onnx.export(
            adapter,
            inputs,
            buf,
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            do_constant_folding=True,
        )
    return buf.getvalue()


def onnx_ops(data: bytes) -> List[str]:
    """Sorted operator types of an ONNX model given as bytes (subgraphs included)."""
    import onnx

    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type if not node.domain else f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(onnx.load_from_string(data).graph)
    return sorted(ops)


def _write(data: bytes, path: str, fmt: str, kind: str, in_names, in_shapes, out_names):
    atomic_write_bytes(data, path)
    ops = onnx_ops(data) if fmt == "onnx" else []
    logger.info("Wrote %s %s graph %s (%.1f MB)", kind, fmt, path, len(data) / 2**20)
    return ExportedGraph(path, kind, fmt, list(in_names), in_shapes, list(out_names), ops)


def export_backbone(model: nn.Module, fmt: str, path: str, image: torch.Tensor) -> ExportedGraph:
    """Write the backbone + simple feature pyramid of a prepared ``model``.

    Args:
        model (nn.Module): detector from :func:`build_export_model`.
        fmt (str): "onnx" or "torchscript".
        path (str): output file (written atomically).
        image (Tensor): (3, S, S) pixel image to trace with (normalised here).
    """
    batch = normalize(model, image)
    adapter = backbone_adapter(model, batch)
    names = [f for f in sorted(model.backbone.output_shape())]
    data = _serialize(adapter, (batch,), fmt, ["image"], names)
    return _write(data, path, fmt, "backbone", ["image"], [list(batch.shape)], names)


def export_detector(model: nn.Module, fmt: str, path: str, image: torch.Tensor) -> ExportedGraph:
    """Write the whole detector (Cascade Mask R-CNN) of a prepared ``model``.

    Args:
        model (nn.Module): detector from :func:`build_export_model`.
        fmt (str): "onnx" or "torchscript".
        path (str): output file (written atomically).
        image (Tensor): (3, S, S) pixel image to trace with.
    """
    adapter = detector_adapter(model, image)
    names = detector_output_names(model, image)
    data = _serialize(adapter, (image,), fmt, ["image"], names)
    return _write(data, path, fmt, "detector", ["image"], [list(image.shape)], names)


def export_model(
    cfg,
    fmt: str,
    output_dir: str,
    load_weights: bool = True,
    parts: Sequence[str] = ("backbone", "detector"),
    verify: bool = False,
) -> Dict[str, ExportedGraph]:
    """Export the config's model: ``<output_dir>/{backbone,detector}.{onnx,ts}`` and
    ``export_info_<format>.json`` (inputs, outputs, ops, what the graphs leave out).

    Args:
        cfg: the LazyConfig (overrides applied).
        fmt (str): "onnx" or "torchscript".
        output_dir (str): folder for the files (created).
        load_weights (bool): load ``train.init_checkpoint``.
        parts (Sequence[str]): which graphs, "backbone" and / or "detector".
        verify (bool): run each written graph (onnxruntime / TorchScript) on another image and
            compare with the eager model (:mod:`eva_det.export.verify`); the results go into
            ``export_info_<format>.json`` and the log.

    Returns:
        dict[str, ExportedGraph]: per part; with ``verify``, each has a ``verification``.

    Raises:
        InputError: an unsupported format or config option (:func:`check_exportable`), or a
            missing weights file.
    """
    check_exportable(cfg, fmt)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise InputError(
                "--format onnx needs the onnx package: pip install onnx onnxruntime "
                "(or pip install -e '.[dev]')."
            ) from None
    built = build_export_model(cfg, load_weights=load_weights, keep_reference=verify)
    model, reference = built if verify else (built, None)
    size = export_input_size(model.backbone)
    image = sample_image(size)
    ext = "onnx" if fmt == "onnx" else "ts"
    graphs = {}
    for part in parts:
        export = {"backbone": export_backbone, "detector": export_detector}[part]
        graphs[part] = export(model, fmt, os.path.join(output_dir, f"{part}.{ext}"), image)
        if verify:
            from .verify import verify_graph

            g = graphs[part]
            result = verify_graph(
                g.path, part, g.output_names, reference, sample_image(size, seed=1)
            )
            g.verification = asdict(result)
    info = {
        "format": fmt,
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "input_size": size,
        "input_format": str(getattr(model, "input_format", "BGR")),
        "pixel_mean": model.pixel_mean.flatten().tolist(),
        "pixel_std": model.pixel_std.flatten().tolist(),
        "graphs": {k: asdict(v) for k, v in graphs.items()},
        "not_exported": list(NOT_EXPORTED),
        "in_graph": in_graph_options(cfg),
    }
    atomic_write_text(
        json.dumps(info, indent=2) + "\n", os.path.join(output_dir, f"export_info_{fmt}.json")
    )
    return graphs


def in_graph_options(cfg) -> Dict[str, Optional[float]]:
    """The inference options recorded in the detector graph (as constants)."""
    heads = _roi_heads_cfg(cfg)
    return {
        "override_score_thresh": heads.get("override_score_thresh", None),
        "maskness_thresh": heads.get("maskness_thresh", None),
    }
