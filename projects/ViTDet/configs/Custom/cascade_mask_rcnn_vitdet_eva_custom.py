# EVA-01 (1B) Cascade Mask R-CNN on your own COCO-format dataset at 1280
# (docs/CUSTOM_DATASETS.md), fine-tuned from the released COCO detector eva_coco_seg.pth: all
# but the class layers load. The dataset is config values (../common/custom_dataset.py).
# Needs a large GPU (the 1B backbone at 1280); the EVA-02 B recipe next to this
# one is the small-GPU choice. Same small-data schedule: 16 images/iter, 3000 iters.
from detectron2.config import LazyCall as L

from eva_det.config import use_custom_coco_dataset, vit_lr_factor

from ..COCO.cascade_mask_rcnn_vitdet_eva import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)
from ..common.custom_dataset import dataset

use_custom_coco_dataset(dataloader)
model.roi_heads.num_classes = len(dataset.thing_classes)
dataloader.train.total_batch_size = 16
dataloader.evaluator.output_dir = "${train.output_dir}"

# layer-wise lr decay 0.9 over 40 blocks; frozen_blocks=k keeps the embeddings and blocks < k
optimizer.lr = 2.5e-5
optimizer.params.lr_factor_func = L(vit_lr_factor)(
    lr_decay_rate=0.9, num_layers=40, frozen_blocks=0
)

train.output_dir = "output/my_dataset_eva01"
train.max_iter = 3000
lr_multiplier.scheduler.milestones = [train.max_iter * 8 // 10, train.max_iter * 9 // 10]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 200 / train.max_iter
train.eval_period = 500
train.checkpointer.period = 500
