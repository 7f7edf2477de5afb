"""ROIPooler whose ROIAlign levels use eva_det's vectorised CPU backward."""

from detectron2.modeling.poolers import ROIPooler
from torch import nn

from eva_det.layers.roi_align import ROIAlign

__all__ = ["FastROIPooler"]


class FastROIPooler(ROIPooler):
    """``detectron2.modeling.poolers.ROIPooler`` with :class:`eva_det.layers.ROIAlign` levels.

    Same constructor and results as the parent. For ``pooler_type`` "ROIAlign" (aligned=False)
    and "ROIAlignV2" (aligned=True) every level pooler is replaced by eva_det's ROIAlign with the
    same output size, scale, sampling ratio and alignment, whose CPU backward is vectorised
    (:mod:`eva_det.layers.roi_align`); other pooler types are the parent's. Use it in a config
    as ``model.roi_heads.box_pooler._target_ = FastROIPooler``.
    """

    def __init__(self, output_size, scales, sampling_ratio, pooler_type, **kwargs):
        super().__init__(output_size, scales, sampling_ratio, pooler_type, **kwargs)
        if pooler_type in ("ROIAlign", "ROIAlignV2"):
            self.level_poolers = nn.ModuleList(
                ROIAlign(p.output_size, p.spatial_scale, p.sampling_ratio, aligned=p.aligned)
                for p in self.level_poolers
            )
