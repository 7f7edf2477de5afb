"""eva_det: EVA / EVA-02 detection and instance segmentation on stock detectron2."""

__version__ = "0.1.0"
