"""Export EVA-01 / EVA-02 detectors to ONNX and TorchScript (``tools/export_model.py``)."""

from .export import (
    FORMATS,
    ExportedGraph,
    build_export_model,
    check_exportable,
    export_backbone,
    export_detector,
    export_model,
)
from .prepare import FixedGridRope, prepare_for_export

__all__ = [
    "FORMATS",
    "ExportedGraph",
    "FixedGridRope",
    "build_export_model",
    "check_exportable",
    "export_backbone",
    "export_detector",
    "export_model",
    "prepare_for_export",
]
