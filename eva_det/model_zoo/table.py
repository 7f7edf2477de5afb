"""The released EVA-01 and EVA-02 detection checkpoints: file, config, published AP, eval flags.

Sources: the official READMEs ``EVA-01/det/README.md`` and ``EVA-02/det/README.md`` of
github.com/baaivision/EVA (model cards and "Expected results" of each evaluation command).
``docs/MODEL_ZOO.md`` is generated from this table by ``tools/model_zoo_doc.py``.
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = [
    "Evaluation",
    "Checkpoint",
    "CHECKPOINTS",
    "EVA01_REPO",
    "EVA02_REPO",
    "PRETRAINED_BACKBONES",
    "checkpoints_by_name",
    "hub_location",
]

# Hugging Face hub repositories of the releases
EVA01_REPO = "BAAI/EVA"  # <name>.pth at the top
EVA02_REPO = "Yuxin-CV/EVA-02"  # eva02/det/<name>.pth, MIM backbones in eva02/pt/
HUB_URL = "https://huggingface.co"

# Evaluation flags of the official commands (config overrides, key=value).
_SOFT_NMS_EVA01 = (
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.method=linear",
    "model.roi_heads.iou_threshold=0.6",
    "model.roi_heads.override_score_thresh=0.0",
)
_SOFT_NMS_EVA02 = (
    "model.roi_heads.use_soft_nms=True",
    "model.roi_heads.class_wise=True",
    "model.roi_heads.method=linear",
    "model.roi_heads.iou_threshold=0.6",
)
_SCORE_0 = ("model.roi_heads.override_score_thresh=0.0",)
_MASKNESS = ("model.roi_heads.maskness_thresh=0.5",)
_EMA = ("train.model_ema.use_ema_weights_for_eval_only=True",)
_LVIS_1000 = ("dataloader.evaluator.max_dets_per_image=1000",)

_CFG = "projects/ViTDet/configs"


@dataclass(frozen=True)
class Evaluation:
    """One published evaluation run of a checkpoint.

    Attributes:
        overrides (tuple[str]): the run's config overrides (``key=value``) besides
            ``train.init_checkpoint``; empty means the config as it is.
        expected (tuple[tuple[str, float]]): (task, AP) pairs the run prints, task "bbox" or
            "segm", AP as published (COCO-style AP x 100).
    """

    overrides: Tuple[str, ...]
    expected: Tuple[Tuple[str, float], ...]

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(task for task, _ in self.expected)


@dataclass(frozen=True)
class Checkpoint:
    """One released detection checkpoint.

    Attributes:
        name (str): model name of the official README (file name without ``.pth``).
        family (str): "EVA-01" or "EVA-02".
        hub_repo (str): Hugging Face hub repository (``ORG/NAME``) holding the file.
        hub_path (str): the file's path in that repository.
        config (str): LazyConfig file of this repository it belongs to (repository-relative).
        dataset (str): evaluation set of the published numbers ("" if none).
        init (str): the checkpoint it was fine-tuned from.
        box_ap (float or None): published box AP of the model card.
        mask_ap (float or None): published mask AP of the model card.
        evaluations (tuple[Evaluation]): the official evaluation commands; the first is the
            default of ``eva_det.model_zoo.get_config``.
        note (str): what else to know.
    """

    name: str
    family: str
    hub_repo: str
    hub_path: str
    config: str
    dataset: str
    init: str
    box_ap: Optional[float]
    mask_ap: Optional[float]
    evaluations: Tuple[Evaluation, ...] = ()
    note: str = ""

    @property
    def filename(self) -> str:
        return self.hub_path.rsplit("/", 1)[-1]

    @property
    def hub_name(self) -> str:
        """``hf://ORG/NAME/PATH``: what ``train.init_checkpoint`` takes to download it."""
        return f"hf://{self.hub_repo}/{self.hub_path}"

    @property
    def url(self) -> str:
        """Download URL on the hub's default branch."""
        return f"{HUB_URL}/{self.hub_repo}/resolve/main/{self.hub_path}"


def _eva01(name, config, dataset, box, mask, evaluations=(), note="", init="eva_o365"):
    return Checkpoint(
        name, "EVA-01", EVA01_REPO, f"{name}.pth", f"{_CFG}/{config}", dataset, init, box, mask,
        tuple(evaluations), note,
    )  # fmt: skip


def _eva02(name, config, dataset, init, box, mask, evaluations=(), note=""):
    return Checkpoint(
        name, "EVA-02", EVA02_REPO, f"eva02/det/{name}.pth", f"{_CFG}/{config}", dataset, init,
        box, mask, tuple(evaluations), note,
    )  # fmt: skip


_COCO = "COCO val2017"
_LVIS = "LVIS v1 val"
_E02_COCO = "eva2_mim_to_coco/eva2_coco_cascade_mask_rcnn_vitdet"
_E02_LVIS = "eva2_mim_to_lvis/eva2_lvis_cascade_mask_rcnn_vitdet"
_E02_O365 = "eva2_o365/eva2_o365_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
_E02_O365_COCO = (
    "eva2_o365_to_coco/eva2_o365_to_coco_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
)
_E02_O365_LVIS = (
    "eva2_o365_to_lvis/eva2_o365_to_lvis_cascade_mask_rcnn_vitdet_l_8attn_1536_lrd0p8.py"
)

CHECKPOINTS: Tuple[Checkpoint, ...] = (
    # ---- EVA-01 (1B), BAAI/EVA ----
    _eva01(
        "eva_o365",
        "COCO/cascade_mask_rcnn_vitdet_eva.py",
        "",
        None,
        None,
        init="EVA-01 MIM pre-training",
        note="Objects365 detector (365 classes, no mask head), 380k iterations: the init "
        "checkpoint of the EVA-01 COCO and LVIS recipes, not an evaluation model. Loading it "
        "into a COCO or LVIS model skips the class rows and leaves the mask head untrained.",
    ),
    _eva01(
        "eva_coco_det",
        "COCO/cascade_mask_rcnn_vitdet_eva_1536.py",
        _COCO,
        64.2,
        53.9,
        [Evaluation(_SOFT_NMS_EVA01, (("bbox", 64.164),))],
        note="The 35k-iteration COCO checkpoint, chosen for boxes; no published "
        "command for its mask AP.",
    ),
    _eva01(
        "eva_coco_seg",
        "COCO/cascade_mask_rcnn_vitdet_eva_1536.py",
        _COCO,
        63.9,
        55.0,
        [Evaluation(_SOFT_NMS_EVA01 + _MASKNESS, (("segm", 55.024),))],
        note="The 45k-iteration COCO checkpoint, chosen for masks.",
    ),
    _eva01(
        "eva_lvis",
        "LVIS/cascade_mask_rcnn_vitdet_eva_1536.py",
        _LVIS,
        62.2,
        55.0,
        [Evaluation(_LVIS_1000 + _MASKNESS, (("bbox", 62.169), ("segm", 54.982)))],
        note="APr 55.1 box / 48.3 mask.",
    ),
    # ---- EVA-02, Yuxin-CV/EVA-02 eva02/det/ ----
    _eva02(
        "eva02_B_coco_bsl",
        f"{_E02_COCO}_b_4attn_1024_lrd0p7.py",
        _COCO,
        "eva02_B_pt_in21k_p14to16",
        55.5,
        47.1,
        [Evaluation((), (("bbox", 55.5017), ("segm", 47.0794)))],
    ),
    _eva02(
        "eva02_L_coco_bsl",
        f"{_E02_COCO}_l_4attn_1024_lrd0p8.py",
        _COCO,
        "eva02_L_pt_m38m_p14to16",
        59.2,
        50.8,
        [Evaluation((), (("bbox", 59.1550), ("segm", 50.7923)))],
    ),
    _eva02(
        "eva02_B_lvis_bsl",
        f"{_E02_LVIS}_b_4attn_1024_lrd0p7.py",
        _LVIS,
        "eva02_B_pt_in21k_p14to16",
        47.1,
        41.4,
        [Evaluation((), (("bbox", 47.1304), ("segm", 41.3575)))],
    ),
    _eva02(
        "eva02_L_lvis_bsl",
        f"{_E02_LVIS}_l_4attn_1024_lrd0p8.py",
        _LVIS,
        "eva02_L_pt_in21k_p14to16",
        55.3,
        48.6,
        [Evaluation((), (("bbox", 55.2866), ("segm", 48.5964)))],
        note="The official README's download link for this model points at "
        "eva02_L_coco_bsl.pth by mistake.",
    ),
    _eva02(
        "eva02_B_coco_sys",
        f"{_E02_COCO}_b_6attn_win32_1536_lrd0p7.py",
        _COCO,
        "eva02_B_pt_in21k_p14to16",
        58.9,
        50.7,
        [
            Evaluation(_SOFT_NMS_EVA02 + _SCORE_0, (("bbox", 58.9331),)),
            Evaluation(_SOFT_NMS_EVA02 + _SCORE_0 + _MASKNESS, (("segm", 50.6875),)),
        ],
    ),
    _eva02(
        "eva02_L_coco_sys",
        f"{_E02_COCO}_l_8attn_win32_1536_lrd0p8.py",
        _COCO,
        "eva02_L_pt_m38m_p14to16",
        62.3,
        53.8,
        [
            Evaluation(_SOFT_NMS_EVA02 + _SCORE_0, (("bbox", 62.2848),)),
            Evaluation(_SOFT_NMS_EVA02 + _SCORE_0 + _MASKNESS, (("segm", 53.8006),)),
        ],
    ),
    _eva02(
        "eva02_L_lvis_sys",
        f"{_E02_LVIS}_l_8attn_win32_1536_lrd0p8.py",
        _LVIS,
        "eva02_L_pt_in21k_p14to16",
        60.1,
        53.5,
        [Evaluation(_SOFT_NMS_EVA02 + _MASKNESS, (("bbox", 60.0506), ("segm", 53.5098)))],
    ),
    _eva02(
        "eva02_L_m38m_to_o365",
        _E02_O365,
        "",
        "eva02_L_pt_m38m_p14to16",
        None,
        None,
        note="Objects365 intermediate fine-tuning (boxes only): the init checkpoint of "
        "eva2_o365_to_coco; no published AP.",
    ),
    _eva02(
        "eva02_L_in21k_to_o365",
        _E02_O365,
        "",
        "eva02_L_pt_in21k_p14to16",
        None,
        None,
        note="Objects365 intermediate fine-tuning (boxes only): the init checkpoint of "
        "eva2_o365_to_lvis; no published AP.",
    ),
    _eva02(
        "eva02_L_coco_det_sys_o365",
        _E02_O365_COCO,
        _COCO,
        "eva02_L_m38m_to_o365",
        64.1,
        54.3,
        [Evaluation(_EMA + _SOFT_NMS_EVA02 + _SCORE_0, (("bbox", 64.1442),))],
        note="Chosen for boxes; no published command for its mask AP.",
    ),
    _eva02(
        "eva02_L_coco_seg_sys_o365",
        _E02_O365_COCO,
        _COCO,
        "eva02_L_m38m_to_o365",
        63.9,
        55.4,
        [Evaluation(_EMA + _SOFT_NMS_EVA02 + _SCORE_0 + _MASKNESS, (("segm", 55.3584),))],
        note="Another checkpoint of the same run as eva02_L_coco_det_sys_o365, chosen for masks.",
    ),
    _eva02(
        "eva02_L_lvis_sys_o365",
        _E02_O365_LVIS,
        _LVIS,
        "eva02_L_in21k_to_o365",
        65.2,
        57.3,
        [
            Evaluation(
                _EMA + _SOFT_NMS_EVA02 + _MASKNESS + _LVIS_1000,
                (("bbox", 65.2244), ("segm", 57.3209)),
            )
        ],
    ),
)


#: EVA-02 MIM-pretrained backbones the EVA-02 recipes start from (official layout, patch 14
#: resized to 16; converted to eva_det's names when loaded): name -> (hub repo, path, the same
#: weights at patch 14 under their timm hub name).
PRETRAINED_BACKBONES: Dict[str, Tuple[str, str, str]] = {
    f"eva02_{size}_pt_{data}_p14to16": (
        EVA02_REPO, f"eva02/pt/eva02_{size}_pt_{data}_p14to16.pt", f"timm/{timm_name}"
    )
    for size, data, timm_name in (
        ("B", "in21k", "eva02_base_patch14_224.mim_in22k"),
        ("L", "in21k", "eva02_large_patch14_224.mim_in22k"),
        ("L", "m38m", "eva02_large_patch14_224.mim_m38m"),
    )
}  # fmt: skip


def checkpoints_by_name() -> Dict[str, Checkpoint]:
    """``{name: Checkpoint}`` of :data:`CHECKPOINTS`."""
    return {c.name: c for c in CHECKPOINTS}


def hub_location(name: str) -> Optional[Tuple[str, str]]:
    """``(hub repo, path in it)`` of a release or pretrained backbone name, else None."""
    entry = checkpoints_by_name().get(name)
    if entry is not None:
        return entry.hub_repo, entry.hub_path
    if name in PRETRAINED_BACKBONES:
        return PRETRAINED_BACKBONES[name][:2]
    return None
