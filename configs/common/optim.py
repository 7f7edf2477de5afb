# AdamW with ViT layer-wise lr decay (ViTDet-B values; recipes override).
from functools import partial

from detectron2 import model_zoo
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

AdamW = model_zoo.get_config("common/optim.py").AdamW
AdamW.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
AdamW.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
