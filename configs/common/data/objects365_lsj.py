# Objects365 v2 with large-scale jitter (LSJ), as the official EVA-02 O365 recipe: trains on
# objects365_train + objects365_val, evaluates on objects365_val (COCO AP), boxes only (no masks,
# so boxes are not recomputed from masks after cropping). Sizes other than 1024 via
# eva_det.config.set_lsj_image_size(dataloader, size). The datasets are registered by eva_det.data.
import eva_det.data  # noqa: F401  (registers objects365_train / objects365_val)
from eva_det.config import get_config

dataloader = get_config("common/data/coco_lsj.py").dataloader
dataloader.train.dataset.names = ["objects365_train", "objects365_val"]
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.recompute_boxes = False
dataloader.test.dataset.names = "objects365_val"
