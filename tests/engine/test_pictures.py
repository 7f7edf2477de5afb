"""Training pictures (eva_det.engine.pictures) and class names taken from dataset metadata."""

import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances
from helpers.shrink import load_config
from PIL import Image

from eva_det.data.metadata import dataset_metadata
from eva_det.engine.pictures import (
    draw_prediction_grid,
    loss_plot_title,
    pictures_config,
    plot_losses,
    write_pictures,
)
from eva_det.errors import InputError
from eva_det.utils.visualize import draw_instances_with_labels

SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
# category ids out of order and not 1..N: contiguous ids follow the sorted ids (3 -> 0, 7 -> 1)
CATEGORIES = [{"id": 7, "name": "zebra"}, {"id": 3, "name": "okapi"}]


class FixedDetector(torch.nn.Module):
    """Returns two detections per image: class 0 (score 0.9) and class 1 (score 0.3)."""

    def forward(self, inputs):
        outputs = []
        for inp in inputs:
            h, w = inp["height"], inp["width"]
            instances = Instances((h, w))
            instances.pred_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0], [10, 10, 40, 40]]))
            instances.scores = torch.tensor([0.9, 0.3])
            instances.pred_classes = torch.tensor([0, 1])
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, 6:28, 6:28] = True
            masks[1, 12:38, 12:38] = True
            instances.pred_masks = masks
            outputs.append({"instances": instances})
        return outputs


@pytest.fixture
def custom_coco(tmp_path):
    """A COCO-format dataset of 3 images (64 x 48) registered without class names."""
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i in range(3):
        pixels = np.full((48, 64, 3), 60 * i, np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        records.append({"id": i + 1, "file_name": f"{i}.png", "height": 48, "width": 64})
    ann = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "area": 100}
    ann.update(iscrowd=0, segmentation=[[2, 2, 12, 2, 12, 12, 2, 12]])
    json_file = tmp_path / "instances.json"
    json_file.write_text(
        json.dumps({"images": records, "annotations": [ann], "categories": CATEGORIES})
    )
    name = "eva_test_pictures_custom"
    register_coco_instances(name, {}, str(json_file), str(images))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_grid_labels_come_from_the_dataset_metadata(custom_coco):
    assert MetadataCatalog.get(custom_coco).get("thing_classes") is None  # as registered
    cfg = load_config(SHAPES, [f"dataloader.test.dataset.names={custom_coco}"])
    model = FixedDetector().train()
    settings = pictures_config(cfg)
    settings.update(columns=2, score_thresh=0.5)
    grid, labels = draw_prediction_grid(model, cfg, settings)
    assert labels == [["okapi 90%"]] * 3  # contiguous class 0 = the smallest category id
    assert grid.shape == (2 * 48, 2 * 64, 3) and grid.dtype == np.uint8
    assert (grid[48:, 64:] == 255).all()  # 3 images in a 2 x 2 grid: the last cell is blank
    assert model.training  # mode restored
    meta = MetadataCatalog.get(custom_coco)
    assert meta.thing_classes == ["okapi", "zebra"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # detectron2's loader sets the same values later without conflict
    assert len(DatasetCatalog.get(custom_coco)) == 3

    settings.update(scale=2.0, score_thresh=0.0, num_images=1)
    grid, labels = draw_prediction_grid(model, cfg, settings)
    assert grid.shape == (96, 128, 3) and labels == [["okapi 90%", "zebra 30%"]]


def test_labels_fall_back_to_class_ids_without_names():
    instances = FixedDetector()([{"height": 48, "width": 64}])[0]["instances"]
    image = np.zeros((48, 64, 3), np.uint8)
    drawn, labels = draw_instances_with_labels(image, instances, Metadata())
    assert labels == ["0 90%", "1 30%"] and drawn.shape == image.shape
    _, labels = draw_instances_with_labels(image, instances, Metadata(thing_classes=["a", "b"]))
    assert labels == ["a 90%", "b 30%"]
    assert dataset_metadata("eva_test_not_registered").get("thing_classes") is None


def _metrics(path, with_ap=True):
    rows = [
        {"iteration": i, "total_loss": 3.0 - 0.1 * i, "loss_cls": 1.0, "loss_mask": 0.5, "lr": 1}
        for i in range(0, 20, 2)
    ]
    if with_ap:
        rows.append({"iteration": 20, "bbox/AP": 61.24, "segm/AP": 55.5, "bbox/AP50": 80.0})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_loss_plot_png_with_final_ap(tmp_path):
    png, ap = plot_losses(str(_metrics(tmp_path / "metrics.json")), title="run")
    assert ap == {"bbox/AP": 61.24, "segm/AP": 55.5}
    (tmp_path / "l.png").write_bytes(png)
    with Image.open(tmp_path / "l.png") as im:
        assert im.format == "PNG" and im.size == (1000, 500)
        im.load()
    _, ap = plot_losses(str(_metrics(tmp_path / "m2.json", with_ap=False)))
    assert ap == {}
    assert loss_plot_title({"bbox/AP": 61.24, "segm/AP": 55.5}, "run") == (
        "run: final box AP 61.2, mask AP 55.5"
    )
    assert loss_plot_title({"bbox/AP": float("nan")}) == "final box AP n/a (no detections)"
    assert loss_plot_title({}) == "final not evaluated"


def test_write_pictures_atomic_files(tmp_path, custom_coco):
    _metrics(tmp_path / "metrics.json")
    cfg = load_config(
        SHAPES, [f"dataloader.test.dataset.names={custom_coco}", f"train.output_dir={tmp_path}"]
    )
    written = write_pictures(cfg, FixedDetector())
    assert sorted(p.split("/")[-1] for p in written) == ["losses.png", "predictions.png"]
    with Image.open(tmp_path / "predictions.png") as im:
        assert im.size == (3 * 64, 48)  # 3 images, up to 4 per row
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "images",
        "instances.json",
        "losses.png",
        "metrics.json",
        "predictions.png",
    ]  # no temporary files left


def test_pictures_config_checks():
    cfg = load_config(SHAPES)
    assert pictures_config(cfg)["enabled"] and pictures_config(cfg)["num_images"] == 8
    cfg.train.pictures.colums = 3
    with pytest.raises(InputError, match=r"Unknown train.pictures keys \['colums'\]"):
        pictures_config(cfg)
    cfg = load_config(SHAPES, ["train.pictures.num_images=0"])
    with pytest.raises(InputError, match="train.pictures.num_images=0 must be >= 1"):
        pictures_config(cfg)
