"""Custom COCO-json registration from config values, its checks, and ViT lr factors with frozen
blocks (eva_det.data.datasets.coco_json, eva_det.config.custom / freeze)."""

import sys

import pytest
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from helpers.coco_layout import write_coco_json
from helpers.shrink import load_config

from eva_det.config import vit_lr_factor
from eva_det.data.datasets import dataset_names, register_coco_json
from eva_det.engine.checks import check_inputs
from eva_det.errors import InputError

RECIPE = "projects/ViTDet/configs/Custom/eva2_custom_cascade_mask_rcnn_vitdet_b_4attn_1024.py"
CATEGORIES = [{"id": 5, "name": "cat"}, {"id": 2, "name": "dog"}]  # id order: dog, cat


@pytest.fixture
def dataset(tmp_path):
    json_file = str(tmp_path / "train.json")
    write_coco_json(json_file, str(tmp_path / "images"), 3, CATEGORIES, [2, 5], seed=0)
    return json_file, str(tmp_path / "images")


@pytest.fixture
def unregister():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_registration_without_reading_files_is_idempotent(tmp_path, unregister):
    unregister.append("t_custom_a")
    args = dict(json_file=str(tmp_path / "none.json"), image_root=str(tmp_path / "no_images"))
    assert register_coco_json("t_custom_a", thing_classes=["x", "y"], **args) == "t_custom_a"
    meta = MetadataCatalog.get("t_custom_a")
    assert meta.thing_classes == ["x", "y"] and meta.evaluator_type == "coco"
    assert meta.json_file == str(tmp_path / "none.json")
    register_coco_json("t_custom_a", thing_classes=["x", "y"], **args)  # same values: no-op
    # other values (a changed override): its own registration is replaced
    register_coco_json("t_custom_a", thing_classes=["x", "y", "z"], **args)
    assert MetadataCatalog.get("t_custom_a").thing_classes == ["x", "y", "z"]


def test_classes_from_json_in_id_order_and_loading(dataset, unregister):
    unregister.append("t_custom_b")
    json_file, images = dataset
    register_coco_json("t_custom_b", json_file, images, num_classes=2)
    assert MetadataCatalog.get("t_custom_b").thing_classes == ["dog", "cat"]
    dicts = DatasetCatalog.get("t_custom_b")
    assert len(dicts) == 3
    assert MetadataCatalog.get("t_custom_b").thing_dataset_id_to_contiguous_id == {2: 0, 5: 1}
    assert {a["category_id"] for d in dicts for a in d["annotations"]} <= {0, 1}


def test_wrong_class_names_are_named_when_the_json_is_read(dataset, unregister):
    unregister.append("t_custom_c")
    json_file, images = dataset
    register_coco_json("t_custom_c", json_file, images, ["cat", "dog"], config_key="dataset")
    with pytest.raises(InputError, match=r"dataset.thing_classes.*\['dog', 'cat'\]"):
        DatasetCatalog.get("t_custom_c")


def test_num_classes_mismatch_says_what_to_set(tmp_path):
    with pytest.raises(InputError, match=r"set model.roi_heads.num_classes=2"):
        register_coco_json("t_custom_d", "a.json", "imgs", ["a", "b"], num_classes=80)


def test_bad_class_lists_and_missing_json(tmp_path):
    with pytest.raises(InputError, match="distinct"):
        register_coco_json("t_custom_e", "a.json", "imgs", ["a", "a"])
    with pytest.raises(InputError, match="does not exist"):
        register_coco_json("t_custom_e", str(tmp_path / "missing.json"), "imgs")
    assert "t_custom_e" not in DatasetCatalog.list()


def test_builtin_names_are_not_replaced():
    with pytest.raises(InputError, match="already registered"):
        register_coco_json("coco_2017_val", "a.json", "imgs", ["a"])
    assert MetadataCatalog.get("coco_2017_val").json_file != "a.json"


def test_dataset_names_of_config_values(unregister):
    unregister.append("t_custom_f")
    call = L(register_coco_json)(
        name="t_custom_f", json_file="a", image_root="b", thing_classes=["q"]
    )
    assert dataset_names("coco_2017_val") == ["coco_2017_val"]
    assert dataset_names(["a", "b"]) == ["a", "b"]
    assert dataset_names(None) == []
    assert dataset_names(call) == ["t_custom_f"] and "t_custom_f" in DatasetCatalog.list()


def test_recipe_checks_register_and_catch_a_class_count_mismatch(dataset, unregister):
    json_file, images = dataset
    unregister += ["mine_train", "mine_test"]
    common = [
        "dataset.name=mine",
        f"dataset.train_json={json_file}",
        f"dataset.train_images={images}",
        f"dataset.test_json={json_file}",
        f"dataset.test_images={images}",
        "dataset.thing_classes=[dog,cat]",
    ]
    with pytest.raises(InputError, match="set model.roi_heads.num_classes=2"):
        check_inputs(load_config(RECIPE, common))  # the recipe's default is 1 class
    check_inputs(load_config(RECIPE, common + ["model.roi_heads.num_classes=2"]))
    assert MetadataCatalog.get("mine_test").thing_classes == ["dog", "cat"]
    # the evaluator follows the test loader's registration
    cfg = load_config(RECIPE, common + ["model.roi_heads.num_classes=2"])
    assert dataset_names(cfg.dataloader.evaluator.dataset_name) == ["mine_test"]


def test_lvis_datasets_need_the_lvis_package(monkeypatch):
    cfg = load_config(
        "projects/ViTDet/configs/LVIS/cascade_mask_rcnn_vitdet_eva.py",
    )
    monkeypatch.setitem(sys.modules, "lvis", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"lvis package.*pip install --no-deps lvis==0.5.3"):
        check_inputs(cfg, eval_only=True)


def test_vit_lr_factor_freezes_embeddings_and_early_blocks():
    plain = vit_lr_factor(lr_decay_rate=0.7, num_layers=12)
    frozen = vit_lr_factor(lr_decay_rate=0.7, num_layers=12, frozen_blocks=3)
    names = [
        "backbone.net.pos_embed",
        "backbone.net.patch_embed.proj.weight",
        "backbone.net.blocks.0.attn.qkv.weight",
        "backbone.net.blocks.2.mlp.fc1.bias",
        "backbone.net.blocks.3.norm1.weight",
        "backbone.net.blocks.11.mlp.fc2.weight",
        "backbone.simfp_2.0.weight",
        "roi_heads.box_predictor.0.cls_score.weight",
    ]
    for name in names:
        assert plain(name) == get_vit_lr_decay_rate(name, lr_decay_rate=0.7, num_layers=12)
    assert [frozen(n) for n in names[:4]] == [0.0] * 4
    assert [frozen(n) for n in names[4:]] == [plain(n) for n in names[4:]]
    with pytest.raises(ValueError, match="frozen_blocks=13"):
        vit_lr_factor(0.7, 12, frozen_blocks=13)
