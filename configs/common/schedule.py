# Step schedule with linear warmup; recipes set max_iter, milestones and warmup length.
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=184375,
    ),
    warmup_length=250 / 184375,
    warmup_factor=0.001,
)
