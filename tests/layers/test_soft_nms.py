"""batched_soft_nms against the sequential mmcv-style loop and against mmcv's published values."""

import numpy as np
import pytest
import torch

from eva_det.layers import batched_soft_nms
from eva_det.utils.testing import soft_nms_sequential_reference

METHODS = ("linear", "gaussian", "naive")


def make_boxes(g: torch.Generator, n: int, num_classes: int, dyadic: bool = False) -> tuple:
    """Clustered, overlapping boxes with distinct scores spread over (0, 1].

    Args:
        g (Generator): random generator.
        n (int): number of boxes.
        num_classes (int): class ids are drawn from [0, num_classes).
        dyadic (bool): round coordinates to multiples of 1/8 so that class offsets are exact.

    Returns:
        boxes (n, 4) float32, scores (n,) float32, idxs (n,) int64.
    """
    centers = torch.rand(max(1, n // 10), 2, generator=g) * 200 + 40  # no box clipped empty
    ctr = centers[torch.randint(0, centers.shape[0], (n,), generator=g)]
    ctr = ctr + torch.randn(n, 2, generator=g) * 5
    wh = torch.rand(n, 2, generator=g) * 40 + 4
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).clamp(min=0)
    if dyadic:
        boxes = (boxes * 8).round() / 8
    # A permutation of distinct values, cubed to put many of them near min_score.
    scores = ((torch.randperm(n, generator=g).float() + 1) / n) ** 3
    idxs = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, idxs


def assert_same(result, expected, method: str) -> None:
    """Same kept boxes, same scores, same order up to equal scores.

    Linear and naive decays must match bit for bit; gaussian up to float32 ``exp`` rounding.
    """
    keep, scores = (t.cpu() for t in result)
    exp_keep, exp_scores = (t.cpu() for t in expected)
    assert keep.dtype == torch.int64 and scores.dtype == torch.float32
    assert sorted(keep.tolist()) == sorted(exp_keep.tolist())
    # Score of every index as the reference has it, looked up in our order.
    exp_of = dict(zip(exp_keep.tolist(), exp_scores.tolist()))
    ours_as_ref = torch.tensor([exp_of[k] for k in keep.tolist()], dtype=torch.float32)
    if method == "gaussian":
        torch.testing.assert_close(scores, ours_as_ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(ours_as_ref, exp_scores, rtol=1e-5, atol=0)
    else:
        assert torch.equal(scores, ours_as_ref)
        assert torch.equal(ours_as_ref, exp_scores)  # the order differs at most within ties
    assert torch.all(scores[1:] <= scores[:-1])


# mmcv's own unit test of soft_nms (tests/test_ops/test_nms.py): 4 boxes, thr 0.3, sigma 0.5,
# min_score 0.01, expected kept indices and decayed scores in output order.
MMCV_BOXES = [
    [6.0, 3.0, 8.0, 7.0],
    [3.0, 6.0, 9.0, 11.0],
    [3.0, 7.0, 10.0, 12.0],
    [1.0, 4.0, 13.0, 7.0],
]
MMCV_SCORES = [0.6, 0.9, 0.7, 0.2]
MMCV_EXPECTED = {
    "linear": ([1, 0, 2, 3], [0.9, 0.6, 0.29024392, 0.2]),
    "gaussian": ([1, 0, 2, 3], [0.9, 0.59630775, 0.35275510, 0.18650459]),
    "naive": ([1, 0, 3], [0.9, 0.6, 0.2]),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fn", [batched_soft_nms, soft_nms_sequential_reference])
def test_mmcv_published_values(fn, method):
    boxes, scores = torch.tensor(MMCV_BOXES), torch.tensor(MMCV_SCORES)
    keep, new_scores = fn(boxes, scores, torch.zeros(4, dtype=torch.long), method, 0.3, 0.5, 0.01)
    exp_keep, exp_scores = MMCV_EXPECTED[method]
    assert keep.tolist() == exp_keep
    torch.testing.assert_close(new_scores, torch.tensor(exp_scores), rtol=1e-6, atol=1e-7)


def test_linear_decay_by_hand():
    # Box 1 overlaps box 0 with IoU 50 / 150 = 1/3; box 2 is far away.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [50.0, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.6])
    idxs = torch.zeros(3, dtype=torch.long)
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, "linear", iou_threshold=0.3)
    assert keep.tolist() == [0, 2, 1]  # 0.8 decays to 0.533, below box 2
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.6, 0.8 * (1 - 1 / 3)]))
    # IoU 1/3 is below a 0.34 threshold: no decay.
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, "linear", iou_threshold=0.34)
    assert keep.tolist() == [0, 1, 2] and new_scores.tolist() == scores.tolist()
    # The comparison is IoU >= thr, in float32: IoU == float32(1/3) decays.
    keep, _ = batched_soft_nms(boxes, scores, idxs, "naive", iou_threshold=float(np.float32(1 / 3)))
    assert keep.tolist() == [0, 2]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "n, num_classes, iou_threshold, min_score",
    [(300, 1, 0.3, 1e-3), (500, 4, 0.5, 1e-3), (800, 10, 0.6, 1e-3), (400, 7, 0.6, 0.05)],
)
def test_random_matches_reference(method, n, num_classes, iou_threshold, min_score):
    g = torch.Generator().manual_seed(n + num_classes)
    boxes, scores, idxs = make_boxes(g, n, num_classes)
    args = (boxes, scores, idxs, method, iou_threshold, 0.5, min_score)
    expected = soft_nms_sequential_reference(*args)
    assert 0 < expected[0].numel() < n  # the case exercises both kept and dropped boxes
    assert_same(batched_soft_nms(*args), expected, method)


def test_detector_like_scores_match_reference():
    # Every proposal scored for every class (score threshold 0), softmax scores: many boxes near
    # min_score, and the same box for every class of a proposal.
    g = torch.Generator().manual_seed(0)
    num_proposals, num_classes = 120, 10
    boxes, _, _ = make_boxes(g, num_proposals, 1)
    logits = torch.randn(num_proposals, num_classes + 1, generator=g) * 2
    scores = logits.softmax(dim=1)[:, :num_classes].reshape(-1)
    boxes = boxes.repeat_interleave(num_classes, dim=0)
    idxs = torch.arange(num_classes).repeat(num_proposals)
    for method in METHODS:
        args = (boxes, scores, idxs, method, 0.6, 0.5, 1e-3)
        assert_same(batched_soft_nms(*args), soft_nms_sequential_reference(*args), method)


@pytest.mark.parametrize("method", METHODS)
def test_classes_never_interact(method):
    # Coordinates on a 1/8 grid keep the class offset exact, so running the reference once with
    # offsets equals running it per class and merging by score.
    g = torch.Generator().manual_seed(1)
    boxes, scores, idxs = make_boxes(g, 600, 5, dyadic=True)
    full = soft_nms_sequential_reference(boxes, scores, idxs, method, 0.5)
    keeps, kept_scores = [], []
    for c in range(5):
        (members,) = torch.nonzero(idxs == c, as_tuple=True)
        k, s = soft_nms_sequential_reference(
            boxes[members], scores[members], torch.zeros_like(members), method, 0.5
        )
        keeps.append(members[k])
        kept_scores.append(s)
    kept_scores, order = torch.sort(torch.cat(kept_scores), descending=True, stable=True)
    per_class = (torch.cat(keeps)[order], kept_scores)
    assert torch.equal(full[0], per_class[0])
    assert torch.equal(full[1], per_class[1])
    assert_same(batched_soft_nms(boxes, scores, idxs, method, 0.5), per_class, method)


def _greedy_lowest_index(boxes, scores, method, thr, sigma, min_score):
    """Textbook soft-NMS of one class in float32, ties to the lowest index, one box at a time."""
    boxes = boxes.numpy().astype(np.float32)
    scores = scores.numpy().astype(np.float32).copy()
    remaining = list(range(len(scores)))
    keep, kept_scores = [], []
    first = True
    while remaining:
        best = max(remaining, key=lambda k: (scores[k], -k))
        remaining.remove(best)
        if not first and scores[best] < np.float32(min_score):
            break
        first = False
        keep.append(best)
        kept_scores.append(scores[best])
        bx1, by1, bx2, by2 = boxes[best]
        for k in list(remaining):
            x1, y1, x2, y2 = boxes[k]
            iw = max(np.float32(0), min(bx2, x2) - max(bx1, x1))
            ih = max(np.float32(0), min(by2, y2) - max(by1, y1))
            inter = iw * ih
            iou = inter / ((bx2 - bx1) * (by2 - by1) + (x2 - x1) * (y2 - y1) - inter)
            if method == "linear":
                weight = np.float32(1) - iou if iou >= np.float32(thr) else np.float32(1)
            elif method == "naive":
                weight = np.float32(0) if iou >= np.float32(thr) else np.float32(1)
            else:
                weight = np.exp(-(iou * iou) / np.float32(sigma))
            scores[k] = scores[k] * weight
            if scores[k] < np.float32(min_score):
                remaining.remove(k)
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept_scores, dtype=torch.float32)


@pytest.mark.parametrize("method", ["linear", "naive"])
def test_exact_ties_go_to_lower_index(method):
    # Many equal scores and boxes: batched_soft_nms breaks ties by input index.
    g = torch.Generator().manual_seed(2)
    boxes, _, _ = make_boxes(g, 120, 1)
    boxes = boxes.round()
    scores = torch.randint(1, 5, (120,), generator=g).float() / 4
    keep, new_scores = batched_soft_nms(boxes, scores, torch.zeros(120, dtype=torch.long), method)
    exp_keep, exp_scores = _greedy_lowest_index(boxes, scores, method, 0.3, 0.5, 1e-3)
    assert torch.equal(keep, exp_keep)
    assert torch.equal(new_scores, exp_scores)


def test_reference_keeps_mmcv_array_order_on_ties():
    # mmcv's kernel fills the slot of a dropped box with its last box, which changes which of
    # two tied boxes comes first. Step 0 picks box 0 and drops box 1 (below min_score), moving
    # box 3 in front of box 2; both score 0.5 and overlap (IoU 0.6), so mmcv picks box 3 first
    # and decays box 2. batched_soft_nms instead picks the lower index (box 2) first.
    boxes = torch.tensor([[100.0, 100, 110, 110], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 6]])
    scores = torch.tensor([0.9, 1e-4, 0.5, 0.5])
    idxs = torch.zeros(4, dtype=torch.long)
    keep, new_scores = soft_nms_sequential_reference(boxes, scores, idxs, "linear", 0.5)
    assert keep.tolist() == [0, 3, 2]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.5, 0.5 * (1 - 0.6)]))
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, "linear", 0.5)
    assert keep.tolist() == [0, 2, 3]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.5, 0.5 * (1 - 0.6)]))


@pytest.mark.parametrize("fn", [batched_soft_nms, soft_nms_sequential_reference])
def test_edge_cases(fn):
    empty = fn(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty[0].shape == (0,) and empty[0].dtype == torch.int64
    assert empty[1].shape == (0,) and empty[1].dtype == torch.float32

    one = fn(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([1e-5]), torch.tensor([3]))
    assert one[0].tolist() == [0] and one[1].tolist() == [pytest.approx(1e-5)]

    # A score equal to min_score (in float32) is kept: the kernel drops only scores < min_score.
    two_boxes = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]])
    keep, _ = fn(two_boxes, torch.tensor([0.9, 1e-3]), torch.zeros(2, dtype=torch.long))
    assert keep.tolist() == [0, 1]

    g = torch.Generator().manual_seed(3)
    boxes, scores, idxs = make_boxes(g, 50, 3)
    # All below min_score: only the image's top box survives, whatever its score.
    low = scores * 1e-4
    keep, new_scores = fn(boxes, low, idxs)
    assert keep.tolist() == [int(low.argmax())] and new_scores.tolist() == [low.max().item()]
    # Only the top box at or above min_score.
    low[7] = 0.5
    keep, new_scores = fn(boxes, low, idxs)
    assert keep.tolist() == [7] and new_scores.tolist() == [0.5]


def test_empty_boxes_and_dtypes():
    g = torch.Generator().manual_seed(4)
    boxes, scores, idxs = make_boxes(g, 200, 3)
    boxes[:20, 2] = boxes[:20, 0]  # empty boxes: IoU 0 / 0 between two of them
    args = (idxs, "linear", 0.5)
    expected = soft_nms_sequential_reference(boxes, scores, *args)
    assert_same(batched_soft_nms(boxes, scores, *args), expected, "linear")
    # Half and double inputs are computed in float32 like the kernel.
    for dtype in (torch.float64, torch.float16):
        b, s = boxes.to(dtype), scores.to(dtype)
        expected = soft_nms_sequential_reference(b.float(), s.float(), *args)
        assert_same(batched_soft_nms(b, s, *args), expected, "linear")
    # Gaussian: two empty boxes count as IoU 0 instead of mmcv's NaN scores.
    keep, new_scores = batched_soft_nms(boxes, scores, idxs, "gaussian")
    assert torch.isfinite(new_scores).all() and keep.numel() > 0


def test_invalid_arguments():
    boxes, scores, idxs = torch.rand(3, 4), torch.rand(3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="method"):
        batched_soft_nms(boxes, scores, idxs, method="hard")
    with pytest.raises(ValueError, match="shape"):
        batched_soft_nms(boxes, scores[:2], idxs)
    with pytest.raises(ValueError, match="iou_threshold"):
        batched_soft_nms(boxes, scores, idxs, method="naive", iou_threshold=0.0)
    with pytest.raises(ValueError, match="negative"):
        batched_soft_nms(boxes - 1, scores, torch.tensor([0, 1, 1]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_reference(method):
    g = torch.Generator().manual_seed(5)
    boxes, scores, idxs = make_boxes(g, 2000, 20)
    expected = soft_nms_sequential_reference(boxes, scores, idxs, method, 0.6)
    result = batched_soft_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), method, 0.6)
    assert result[0].is_cuda and result[1].is_cuda
    assert_same(result, expected, method)
