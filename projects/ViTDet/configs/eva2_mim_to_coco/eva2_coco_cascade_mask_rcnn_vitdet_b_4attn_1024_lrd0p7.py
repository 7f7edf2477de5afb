# EVA-02 B Cascade Mask R-CNN on COCO at 1024, fine-tuned from MIM-pretrained EVA-02 B
# (eva02_B_pt_in21k_p14to16; released as eva02_B_coco_bsl: 55.5 box / 47.1 mask AP).
# Window 16 with global attention in blocks 2, 5, 8, 11; layer-wise lr decay 0.7 over 12 blocks.
# 60k iters * 128 images/iter / 118k images/epoch ~= 65 epochs; lr steps at 80% and 90%.
# Every EVA-02 recipe derives from this file.
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from eva_det.config import get_config, set_lsj_image_size

model = get_config("common/models/cascade_mask_rcnn_vitdet_eva02.py").model
dataloader = get_config("common/data/coco_lsj.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier
train = get_config("common/train.py").train
test = get_config("common/test.py").test  # TTA, eval precision

image_size = 1024
set_lsj_image_size(dataloader, image_size)
dataloader.train.total_batch_size = 128
dataloader.test.num_workers = 0

model.backbone.square_pad = image_size
model.backbone.net.update(
    img_size=image_size,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4 * 2 / 3,
    window_size=16,
    drop_path_rate=0.1,
    use_act_checkpoint=False,
    # global attention in blocks 2, 5, 8, 11
    window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
)

optimizer.lr = 5e-5
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.7, num_layers=12)
optimizer.params.overrides = {}
optimizer.params.weight_decay_norm = None

train.init_checkpoint = ""
train.max_iter = 60000
lr_multiplier.scheduler.milestones = [train.max_iter * 8 // 10, train.max_iter * 9 // 10]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 1000 / train.max_iter

# Defaults of the official EVA-02 fork's configs/common/train.py.
train.checkpointer.period = 500
train.eval_period = 500
train.model_ema.update(enabled=False, decay=0.9999, device="cuda")
