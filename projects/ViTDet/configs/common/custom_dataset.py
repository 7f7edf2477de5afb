# Your own COCO-format dataset as config values, shared by the recipes in ../Custom/
# (docs/CUSTOM_DATASETS.md). Edit them in a copy of a recipe (after its import of this file) or
# override them on the command line, e.g. dataset.train_json=/data/mine/train.json
# 'dataset.thing_classes=[cat,dog]' model.roi_heads.num_classes=2.
dataset = dict(
    name="my_dataset",  # registered as my_dataset_train and my_dataset_test
    # the json's category names in category-id order (labels of the demo); None reads them
    # from train_json. model.roi_heads.num_classes must equal their number.
    thing_classes=["object"],
    train_json="datasets/my_dataset/annotations/train.json",
    train_images="datasets/my_dataset/images/train",  # the json's file_name is relative to it
    test_json="datasets/my_dataset/annotations/val.json",
    test_images="datasets/my_dataset/images/val",
)
