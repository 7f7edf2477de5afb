# Training options read by tools/lazyconfig_train_net.py (detectron2's keys plus EMA, seed and
# gradient clipping).
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
# seed of every RNG (+ rank); -1 = random (detectron2's default_setup reads it)
train.seed = -1
# gradient clipping after backward (AMP: on unscaled gradients), eva_det.engine.trainer:
# clip_type "norm" (clip_grad_norm_ over all parameters, max norm clip_value, p = norm_type)
# or "value" (clip_grad_value_ at clip_value)
train.clip_grad = dict(enabled=False, clip_type="norm", clip_value=1.0, norm_type=2.0)
# pictures written into train.output_dir after the last iteration (eva_det.engine.pictures):
# predictions.png (the first num_images test images, detections >= score_thresh with class
# names, columns per row, drawn at scale x image size) and losses.png (losses, final AP)
train.pictures = dict(enabled=True, num_images=8, columns=4, score_thresh=0.5, scale=1.0)
