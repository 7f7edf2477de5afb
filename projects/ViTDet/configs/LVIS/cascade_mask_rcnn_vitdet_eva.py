# EVA-01 (1B) Cascade Mask R-CNN on LVIS v1 at 1280: 1203 classes, repeat-factor sampling,
# sigmoid CE + federated loss, 300 detections at score 0.02.
# 75001 iters * 64 images/iter / 100k images/epoch ~= 48 epochs; lr steps at 70k and 75k.
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from eva_det.data.fed_loss import FedLossClsWeights
from eva_det.evaluation import LVISEvaluator

from ..COCO.cascade_mask_rcnn_vitdet_eva import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    test,
    train,
)

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001
    )
)
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(
    dataset_name="${..test.dataset.names}",
    max_dets_per_image=300,
)

model.roi_heads.num_classes = 1203
for predictor in model.roi_heads.box_predictors:
    predictor.update(
        test_score_thresh=0.02,
        test_topk_per_image=300,
        use_sigmoid_ce=True,
        use_fed_loss=True,
        get_fed_loss_cls_weights=L(FedLossClsWeights)(
            dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
        ),
    )
del predictor  # a loop variable would otherwise become a top-level config key

optimizer.lr = 2e-4
train.max_iter = 75001
train.eval_period = 5000
lr_multiplier.scheduler.milestones = [70000, 75000]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 250 / train.max_iter
