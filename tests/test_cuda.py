"""CUDA paths that the CPU suite cannot reach: attention kernels under autocast, AMP training with
activation checkpointing, EVA-02 SDPA, ``torch.compile`` of the ViT. Skipped without CUDA; run
on a GPU with ``pytest -m cuda tests`` (bench/gpu_check.py does). Each check takes the device as
an argument, so the same body also runs on the CPU (``check_*(\"cpu\")``) when it is edited.
"""

import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage
from shrink import EVA01_SHRINK, load_config

from eva_det.layers.rel_pos_attention import plain_rel_pos_attention, rel_pos_attention
from eva_det.modeling.backbone.eva02_vit import EVA02ViT
from eva_det.modeling.backbone.eva_vit import EVAViT

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
SHAPES = "projects/ViTDet/configs/Shapes/cascade_mask_rcnn_vitdet_eva_tiny.py"
EVA01_COCO = "projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_eva.py"


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def _attention_inputs(device, B=2, nh=4, qh=12, qw=10, hd=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = qh * qw
    q, k, v = (torch.randn(B, nh, N, hd, generator=g) for _ in range(3))
    rel_h = torch.randn(B, nh, qh, qw, qh, generator=g)
    rel_w = torch.randn(B, nh, qh, qw, qw, generator=g)
    return [t.to(device) for t in (q, k, v, rel_h, rel_w)]


def check_attention_impls(device: str, amp_dtype) -> None:
    """Every impl (whole and row-blocked SDPA mask) in fp32 equals plain; under autocast it stays
    within 16-bit rounding of the fp32 plain output."""
    q, k, v, rh, rw = _attention_inputs(device)
    with _no_tf32():
        ref = plain_rel_pos_attention(q, k, v, rh, rw, 0.2)
        for impl in ("sdpa", "blocked"):
            out = rel_pos_attention(q, k, v, rh, rw, 0.2, impl)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4, msg=impl)
        blocked_mask = rel_pos_attention(q, k, v, rh, rw, 0.2, "sdpa", max_mask_bytes=1)
        torch.testing.assert_close(blocked_mask, ref, atol=2e-5, rtol=1e-4)
    with torch.autocast(torch.device(device).type, dtype=amp_dtype):
        for impl, mask_bytes in (("sdpa", 2**30), ("sdpa", 1), ("plain", 2**30), ("auto", 2**30)):
            out = rel_pos_attention(q, k, v, rh, rw, 0.2, impl, max_mask_bytes=mask_bytes)
            assert torch.isfinite(out).all(), impl
            assert _rel_err(out, ref) < 2e-2, (impl, mask_bytes, _rel_err(out, ref))


class _no_tf32:
    """Context: float32 matmuls and convolutions in full precision (no TF32)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def check_attention_gradients_under_autocast(device: str, amp_dtype) -> None:
    """SDPA with the bias as a mask (row-blocked too) gives finite gradients under autocast that
    agree with the fp32 plain path, for q, k, v and both bias tensors."""
    grads = {}
    for name, impl, mask_bytes, amp in (
        ("ref", "plain", 2**30, False),
        ("sdpa", "sdpa", 2**30, True),
        ("sdpa_rows", "sdpa", 1, True),
    ):
        ts = [t.requires_grad_(True) for t in _attention_inputs(device)]
        with _no_tf32(), torch.autocast(torch.device(device).type, amp_dtype, enabled=amp):
            out = rel_pos_attention(*ts, 0.2, impl, max_mask_bytes=mask_bytes)
        weight = torch.linspace(-1, 1, out.numel(), device=device).view_as(out)
        (out.float() * weight).sum().backward()
        grads[name] = [t.grad for t in ts]
    for name in ("sdpa", "sdpa_rows"):
        for tensor, g, ref in zip("q k v rel_h rel_w".split(), grads[name], grads["ref"]):
            assert torch.isfinite(g).all(), (name, tensor)
            assert _rel_err(g, ref) < 5e-2, (name, tensor, _rel_err(g, ref))


def _training_input(size: int) -> dict:
    """One training image with 3 boxes and their rectangle masks (detectron2's input format)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    boxes = torch.tensor(
        [[8.0, 8.0, 60.0, 50.0], [30.0, 40.0, 120.0, 110.0], [0.0, 70.0, 40.0, 127.0]]
    )
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = True
    inst = Instances((size, size))
    inst.gt_boxes, inst.gt_classes, inst.gt_masks = (
        Boxes(boxes),
        torch.tensor([0, 5, 9]),
        BitMasks(masks),
    )
    image = torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(0))
    return {"image": image.float(), "height": size, "width": size, "instances": inst}


def check_amp_training_step_with_checkpointing(device: str) -> None:
    """Two fp16-AMP steps of the shrunk EVA-01 COCO detector with activation checkpointing: finite
    losses and gradients, the checkpointed ViT's parameter names unchanged, weights updated."""
    over = [o for o in EVA01_SHRINK if "use_act_checkpoint" not in o]
    cfg = load_config(EVA01_COCO, over + ["model.backbone.net.use_act_checkpoint=True"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).to(device).train()
    assert model.backbone.net.use_act_checkpoint
    names = set(model.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = torch.float16 if device.startswith("cuda") else torch.bfloat16
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == torch.float16)
    before = model.backbone.net.blocks[0].mlp.fc1.weight.detach().clone()
    with EventStorage(0):
        for _ in range(2):
            with torch.autocast(torch.device(device).type, dtype=amp):
                losses = model([_training_input(128)])
            assert all(torch.isfinite(v) for v in losses.values()), losses
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            grads = [p.grad for p in model.backbone.net.parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads)
            scaler.step(optimizer)
            scaler.update()
    assert set(model.state_dict()) == names
    assert not torch.equal(model.backbone.net.blocks[0].mlp.fc1.weight.detach(), before)


def check_eva02_sdpa_under_autocast(device: str, amp_dtype) -> None:
    """Tiny EVA-02 ViT: "sdpa" under autocast stays within 16-bit rounding of fp32 "plain"."""
    kw = dict(img_size=64, embed_dim=64, depth=2, num_heads=4, window_size=4)
    torch.manual_seed(0)
    model = EVA02ViT(**kw, window_block_indexes=[0], attn_impl="plain").to(device).eval()
    x = torch.randn(1, 3, 64, 64, device=device)
    with torch.no_grad(), _no_tf32():
        ref = model(x)["last_feat"]
    for block in model.blocks:
        block.attn.attn_impl = "sdpa"
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=amp_dtype):
        out = model(x)["last_feat"]
    assert torch.isfinite(out).all() and _rel_err(out, ref) < 3e-2, _rel_err(out, ref)


def check_compiled_vit_matches_eager(device: str) -> None:
    """``torch.compile`` (inductor) of a tiny EVA-01 ViT under bf16 autocast matches eager."""
    torch.manual_seed(0)
    kw = dict(img_size=64, embed_dim=64, depth=2, num_heads=4, window_size=4, use_rel_pos=True)
    model = EVAViT(**kw, window_block_indexes=[0], rel_pos_zero_init=False).to(device).eval()
    x = torch.randn(1, 3, 64, 64, device=device)
    compiled = torch.compile(model, dynamic=False)
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        eager = model(x)["last_feat"].float()
        out = compiled(x)["last_feat"].float()
    assert _rel_err(out, eager) < 2e-2, _rel_err(out, eager)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_attention_impls_on_cuda(amp_dtype):
    check_attention_impls("cuda", amp_dtype)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_attention_gradients_under_autocast_on_cuda(amp_dtype):
    check_attention_gradients_under_autocast("cuda", amp_dtype)


def test_amp_training_step_with_checkpointing_on_cuda():
    check_amp_training_step_with_checkpointing("cuda")


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_eva02_sdpa_under_autocast_on_cuda(amp_dtype):
    check_eva02_sdpa_under_autocast("cuda", amp_dtype)


def test_compiled_vit_matches_eager_on_cuda():
    check_compiled_vit_matches_eager("cuda")
