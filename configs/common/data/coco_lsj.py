# COCO with large-scale jitter (LSJ) at image_size; other sizes via
# eva_det.config.set_lsj_image_size(dataloader, size) instead of one file per size.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from eva_det.config import set_lsj_image_size
from eva_det.data.robust_mapper import RobustDatasetMapper
from eva_det.evaluation import COCOEvaluator

image_size = 1024

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
set_lsj_image_size(dataloader, image_size)
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
# recompute boxes after cropping
dataloader.train.mapper.recompute_boxes = True
# detectron2's DatasetMapper (same keys) that skips unreadable training images with a warning,
# names them in evaluation and drops annotations without a usable mask (eva_det.data.robust_mapper)
dataloader.train.mapper._target_ = RobustDatasetMapper
dataloader.test.mapper._target_ = RobustDatasetMapper

# faster-coco-eval scoring (pycocotools numbers; pass backend="pycocotools" to use it instead)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
