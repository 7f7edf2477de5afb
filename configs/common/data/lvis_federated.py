# LVIS v1 building blocks shared by the LVIS recipes:
# - dataloader: the COCO LSJ loader re-pointed at lvis_v1_train / lvis_v1_val, with repeat-factor
#   sampling (threshold 0.001) and LVISEvaluator keeping 300 detections per image;
# - roi_heads: 1203 classes;
# - box_predictor: settings for every cascade stage's FastRCNNOutputLayers: sigmoid CE with the
#   federated loss (class weights image_count ** 0.5 of the training set), score 0.02, 300 dets.
# Recipes: dataloader = lvis.dataloader; set_lsj_image_size(dataloader, size);
#          model.roi_heads.update(lvis.roi_heads); each predictor.update(lvis.box_predictor).
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from eva_det.config import get_config
from eva_det.data.fed_loss import FedLossClsWeights
from eva_det.evaluation import LVISEvaluator

dataloader = get_config("common/data/coco_lsj.py").dataloader
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

roi_heads = dict(num_classes=1203)

box_predictor = dict(
    test_score_thresh=0.02,
    test_topk_per_image=300,
    use_sigmoid_ce=True,
    use_fed_loss=True,
    get_fed_loss_cls_weights=L(FedLossClsWeights)(
        dataset_names="${dataloader.train.dataset.names}", freq_weight_power=0.5
    ),
)
