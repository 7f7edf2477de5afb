# The official tree's LSJ loader; sizes other than 1024 come from
# eva_det.config.set_lsj_image_size(dataloader, size) (no coco_loader_lsj_<size>.py copies).
from eva_det.config import get_config

dataloader = get_config("common/data/coco_lsj.py").dataloader
