# EVA-01 LVIS evaluation recipe at 1536 ("beit" rel-pos resize, img_size kept at 1280):
# score threshold 0.001 and up to 1000 detections per image.
from eva_det.config import set_lsj_image_size

from .cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, test, train

image_size = 1536
set_lsj_image_size(dataloader, image_size)
model.backbone.square_pad = image_size
model.backbone.net.img_size = 1280
model.backbone.net.interp_type = "beit"

dataloader.evaluator.max_dets_per_image = 1000
for predictor in model.roi_heads.box_predictors:
    predictor.update(test_score_thresh=0.001, test_topk_per_image=1000)
del predictor  # a loop variable would otherwise become a top-level config key
