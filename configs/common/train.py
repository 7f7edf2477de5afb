# Training options read by tools/lazyconfig_train_net.py (detectron2's keys plus EMA, seed and
# gradient clipping).
from detectron2 import model_zoo

from eva_det.engine.ema import EMA_DEFAULTS as _EMA_DEFAULTS
from eva_det.engine.pictures import PICTURES_DEFAULTS as _PICTURES_DEFAULTS
from eva_det.engine.trainer import CLIP_GRAD_DEFAULTS as _CLIP_GRAD_DEFAULTS

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
# on CPU, AMP needs a dtype: None = float32 (amp.enabled has no effect), "bfloat16" = autocast
train.amp.cpu_dtype = None
train.ddp.fp16_compression = True
# EMA of the weights (eva_det.engine.ema; defaults in code, official decay 0.9999)
train.model_ema = dict(_EMA_DEFAULTS)
# seed of every RNG (+ rank); -1 = random (detectron2's default_setup reads it)
train.seed = -1
# gradient clipping after backward (AMP: on unscaled gradients), eva_det.engine.trainer:
# clip_type "norm" (clip_grad_norm_ over all parameters, max norm clip_value, p = norm_type)
# or "value" (clip_grad_value_ at clip_value)
train.clip_grad = dict(_CLIP_GRAD_DEFAULTS)
# pictures written into train.output_dir after the last iteration (eva_det.engine.pictures):
# predictions.png (the first num_images test images, detections >= score_thresh with class
# names, columns per row, drawn at scale x image size) and losses.png (losses, final AP)
train.pictures = dict(_PICTURES_DEFAULTS)
# checkpoint loading (eva_det.checkpoint.fit / safe_load): a checkpoint that does not fit the
# model (evaluation: any tensor missing, unused or of another shape; training: the pretrained
# backbone incomplete) is an error unless allow_checkpoint_mismatch=True; files that pickle
# objects other than tensors (and the types official EVA files use) are refused unless
# unsafe_load_executes_code=True, which runs the file's pickled code (trusted files only)
train.allow_checkpoint_mismatch = False
train.unsafe_load_executes_code = False
