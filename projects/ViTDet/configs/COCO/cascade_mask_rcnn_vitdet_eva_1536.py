# EVA-01 COCO evaluation recipe: the 1280-trained model run at 1536.
# img_size stays 1280 so parameter shapes match the checkpoint; inputs are padded to 1536 and
# rel-pos tables resized with BEiT's cubic spline ("beit"), slightly better than linear.
from eva_det.config import set_lsj_image_size

from .cascade_mask_rcnn_vitdet_eva import dataloader, lr_multiplier, model, optimizer, test, train

image_size = 1536
set_lsj_image_size(dataloader, image_size)
model.backbone.square_pad = image_size
model.backbone.net.img_size = 1280
model.backbone.net.interp_type = "beit"
