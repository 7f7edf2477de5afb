# EVA-01 (1B) Cascade Mask R-CNN, COCO fine-tuning recipe at 1280 (from eva_o365.pth):
# 45k iters * 64 images/iter / 118k images/epoch ~= 24 epochs; lr steps at 40k.
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from eva_det.config import set_lsj_image_size

from .cascade_mask_rcnn_vitdet_b_100ep import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

image_size = 1280
set_lsj_image_size(dataloader, image_size)
dataloader.train.total_batch_size = 64

model.backbone.square_pad = image_size
model.backbone.net.update(
    img_size=image_size,
    patch_size=16,
    embed_dim=1408,
    depth=40,
    num_heads=16,
    mlp_ratio=6144 / 1408,
    window_size=16,
    drop_path_rate=0.6,
    use_act_checkpoint=True,
    beit_like_qkv_bias=True,
    beit_like_gamma=False,
    freeze_patch_embed=True,
    interp_type="vitdet",
    # global attention in blocks 3, 7, ..., 39; the other 30 blocks are windowed
    window_block_indexes=[i for i in range(40) if i % 4 != 3],
)

optimizer.lr = 2.5e-5
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.9, num_layers=40)
optimizer.params.overrides = {}
optimizer.params.weight_decay_norm = None

train.max_iter = 45000
lr_multiplier.scheduler.milestones = [40000, train.max_iter - 1]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 500 / train.max_iter
