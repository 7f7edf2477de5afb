"""eva_det's CPU ROIAlign (vectorised backward) against torchvision's op and detectron2's pooler."""

import importlib

import pytest
import torch
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes
from torchvision.ops import roi_align as tv_roi_align

from eva_det.layers import ROIAlign
from eva_det.modeling import FastROIPooler

ra = importlib.import_module("eva_det.layers.roi_align")  # the module, not the function

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


def make_rois(g, batch, num, height, width, scale, dtype, outside=True):
    """(num, 5) ROIs on ``batch`` images of a (height, width) map at ``scale``: boxes of many
    sizes; with ``outside`` also ROIs partly / fully outside the map, tiny and zero-width ones."""
    b = torch.randint(0, batch, (num, 1), generator=g).double()
    ctr = torch.rand(num, 2, generator=g) * torch.tensor([width, height]) / scale
    side = torch.exp(torch.empty(num, 2).uniform_(-2.0, 3.5, generator=g)) / scale
    xyxy = torch.cat([ctr - side / 2, ctr + side / 2], 1)
    if outside:
        xyxy[0] = torch.tensor([-30.0, -20.0, 5.0, 4.0]) / scale  # partly outside
        xyxy[1] = torch.tensor([width + 3.0, 2.0, width + 9.0, 6.0]) / scale  # fully outside
        xyxy[2] = torch.tensor([-9.0, -9.0, -4.0, -3.0]) / scale  # fully outside, before 0
        xyxy[3, 2] = xyxy[3, 0]  # zero width
        xyxy[4, 3] = xyxy[4, 1]  # zero height
        xyxy[5, 2:] = xyxy[5, :2] + 0.01  # tiny
        xyxy[6] = torch.tensor([0.0, 0.0, width, height]) / scale  # whole map (edge rule)
        xyxy[7, 2:] = xyxy[7, :2] - 1.0  # inverted
    return torch.cat([b, xyxy], 1).to(dtype)


def check(x, rois, size, scale, sampling_ratio, aligned, g):
    """Output and input gradient of eva_det's roi_align equal torchvision's."""
    tol = TOL[x.dtype]
    leaf_tv, leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = tv_roi_align(leaf_tv, rois, size, scale, sampling_ratio, aligned)
    out = ra.roi_align(leaf, rois, size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(out, ref, **tol)
    grad = torch.randn(ref.shape, generator=g, dtype=x.dtype)
    (ref_dx,) = torch.autograd.grad(ref, leaf_tv, grad)
    (dx,) = torch.autograd.grad(out, leaf, grad)
    assert dx.is_contiguous() and dx.dtype == x.dtype
    torch.testing.assert_close(dx, ref_dx, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("size", [7, (14, 14)])
def test_matches_torchvision(dtype, sampling_ratio, aligned, size):
    g = torch.Generator().manual_seed(sampling_ratio * 7 + aligned + (size == 7) * 3)
    batch, channels, height, width, scale = 3, 5, 19, 27, 0.5  # non-square map
    x = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    rois = make_rois(g, batch, 40, height, width, scale, dtype)
    check(x, rois, size, scale, sampling_ratio, aligned, g)
    # every sample inside the map: the broadcast path (no sample selection)
    inside = make_rois(g, batch, 20, height, width, scale, dtype, outside=False)
    inside[:, 1:] = inside[:, 1:].clamp(min=0).clamp(max=min(height, width) / scale - 1)
    check(x, inside, size, scale, sampling_ratio, aligned, g)


def test_non_square_output_and_single_image():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 9, 31, generator=g, dtype=torch.float64)
    rois = make_rois(g, 1, 12, 9, 31, 1.0, torch.float64)
    for sampling_ratio in (1, 3, 0):
        check(x, rois, (3, 5), 1.0, sampling_ratio, True, g)


def test_empty_rois():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = ra.roi_align(x, torch.zeros(0, 5), 7, 0.25, 1, True)
    assert out.shape == (0, 4, 7, 7)
    (dx,) = torch.autograd.grad(out.sum(), x)
    assert dx.shape == x.shape and not dx.any()


def test_adaptive_fallback(monkeypatch):
    """Above MAX_PADDED_SAMPLES the adaptive backward is torchvision's: still equal."""
    monkeypatch.setattr(ra, "MAX_PADDED_SAMPLES", 10)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    check(x, make_rois(g, 2, 10, 16, 16, 1.0, torch.float64), 7, 1.0, 0, True, g)


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    # keep samples away from integer coordinates (where ROIAlign is not differentiable)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.1, 3.3], [1, 1.2, 0.4, 6.3, 5.6], [1, -1.3, 2.2, 3.9, 7.4]],
        dtype=torch.float64,
    )
    for sampling_ratio in (1, 2, 0):
        assert torch.autograd.gradcheck(
            lambda t: ra.roi_align(t, rois, (2, 3), 1.0, sampling_ratio, True), (x,)
        )


def test_bfloat16_autocast():
    """As torchvision under CPU autocast: float32 inside, output and gradient in bfloat16."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 16, 20, generator=g).to(torch.bfloat16)
    rois = make_rois(g, 2, 30, 16, 20, 0.25, torch.float32)
    grad = torch.randn(30, 8, 7, 7, generator=g).to(torch.bfloat16)
    results = []
    for module in (ROIAlign(7, 0.25, 1), ROIAlign(7, 0.25, 1)):
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if not results:  # detectron2's layer, i.e. torchvision's autocast kernel
                out = super(ROIAlign, module).forward(leaf, rois)
            else:
                out = module(leaf, rois)
        (dx,) = torch.autograd.grad(out, leaf, grad)
        results.append((out, dx))
    (ref, ref_dx), (out, dx) = results
    assert out.dtype == torch.bfloat16 and dx.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-2, atol=1e-2)


def test_module_checks_roi_shape():
    with pytest.raises(AssertionError):
        ROIAlign(7, 1.0, 1)(torch.randn(1, 2, 8, 8), torch.zeros(3, 4))


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_fast_pooler_matches_detectron2(pooler_type):
    g = torch.Generator().manual_seed(5)
    strides, image = (4, 8, 16, 32), 256
    features = [torch.randn(2, 16, image // s, image // s, generator=g) for s in strides]
    boxes = []
    for n in (37, 23):  # boxes of several scales, so that every level gets some
        side = torch.exp(torch.empty(n, 2).uniform_(2.0, 6.5, generator=g))
        ctr = torch.rand(n, 2, generator=g) * image
        boxes.append(Boxes(torch.cat([ctr - side / 2, ctr + side / 2], 1).clamp(0, image)))
    kwargs = dict(
        output_size=7, scales=[1.0 / s for s in strides], sampling_ratio=0, pooler_type=pooler_type
    )
    ref_pooler, pooler = ROIPooler(**kwargs), FastROIPooler(**kwargs)
    assert all(isinstance(p, ROIAlign) for p in pooler.level_poolers)
    assert [p.aligned for p in pooler.level_poolers] == [
        p.aligned for p in ref_pooler.level_poolers
    ]
    grad = torch.randn(60, 16, 7, 7, generator=g)
    results = []
    for p in (ref_pooler, pooler):
        leaves = [f.clone().requires_grad_() for f in features]
        out = p(leaves, boxes)
        results.append((out, torch.autograd.grad(out, leaves, grad)))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for dx, ref_dx in zip(grads, ref_grads):
        torch.testing.assert_close(dx, ref_dx, rtol=1e-6, atol=1e-6)


def test_fast_pooler_other_types_are_the_parents():
    pooler = FastROIPooler(7, scales=[1 / 4, 1 / 8], sampling_ratio=0, pooler_type="ROIPool")
    assert not any(isinstance(p, ROIAlign) for p in pooler.level_poolers)
