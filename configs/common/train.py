# Training options read by tools/lazyconfig_train_net.py (detectron2's keys plus EMA's).
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.model_ema = dict(
    enabled=False,
    decay=0.999,
    device="",
    use_ema_weights_for_eval_only=False,
)
