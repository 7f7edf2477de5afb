# Test-time augmentation options, read by tools/lazyconfig_train_net.py through
# eva_det.modeling.tta.build_tta_model (these are also the defaults for configs without `test`):
#   --eval-only --config-file CFG ... test.aug.enabled=True test.aug.min_sizes=[1024,1280,1536]
# Each min size gives one pass (two with flip): short edge resized to it, long edge capped at
# max_size. max_size (one int, or one per min size) may not exceed model.backbone.square_pad;
# None means "= model.backbone.square_pad". The defaults suit the *_1536 configs on COCO-shaped
# (4:3) images: 1152 is their plain test scale (long edge 1536).
test = dict(
    aug=dict(
        enabled=False,
        min_sizes=[768, 960, 1152],
        max_size=None,
        flip=True,
    ),
    # Inference precision, read by eva_det.engine.precision (evaluation and tools/demo.py):
    #   test.amp.enabled=True runs the model under torch.autocast in test.amp.dtype
    #   ("bfloat16" or "float16"); the official code evaluates in float32 (the default here).
    amp=dict(enabled=False, dtype="bfloat16"),
    # torch.compile(model.backbone.net, dynamic=False) while evaluating (first batch compiles).
    compile_backbone=False,
)
