"""ROIAlign with a vectorised CPU backward, equal to torchvision's.

torchvision's CPU ``_roi_align_backward`` is a scalar loop over (roi, channel, bin, sample) that
recomputes the bilinear weights for every channel. :func:`roi_align` here returns the same output
(the forward is torchvision's op) and the same gradient w.r.t. the input, computed as:

1. for every (roi, bin, sample) the sample position, its validity and the four bilinear corners
   (flat indices into ``B * H * W``) and weights, once for all channels, with the CPU kernel's
   arithmetic step by step (``-0.5`` offset when ``aligned``, ROI sides clamped to >= 1 only when
   not ``aligned``, samples with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` dropped, clamping at
   0, the ``y_low >= H - 1`` rule, weights ``hy*hx, hy*lx, ly*hx, ly*lx``, ``g * w / count``);
2. one ``index_add_`` of the (valid sample, corner) rows, each ``C`` wide, into a ``(B*H*W, C)``
   (channels-last) gradient buffer.

Rows are added in torchvision's order (roi, bin, sample, corner) for every channel, so the
gradient is the same bit for bit, not only up to rounding.

``sampling_ratio > 0`` (fixed grid) and ``sampling_ratio <= 0`` (adaptive, ``ceil(roi_side /
pooled_side)`` samples per bin and ROI) are both vectorised; the adaptive grid is padded to the
largest ROI's and masked. When that padded grid would exceed ``MAX_PADDED_SAMPLES`` samples the
backward falls back to torchvision's own kernel. CUDA (and other non-CPU) tensors always use
torchvision's op and its backward.

Under CPU autocast, or with a bfloat16 / float16 input, both passes compute in float32 (as
torchvision's autocast kernel does) and return the output and the gradient in the input's dtype.
"""

import logging
from typing import Tuple, Union

import torch
from detectron2.layers import ROIAlign as _D2ROIAlign
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align as tv_roi_align

__all__ = ["MAX_PADDED_SAMPLES", "ROIAlign", "roi_align"]

logger = logging.getLogger(__name__)

#: Largest padded (roi, bin, sample) count vectorised in the adaptive case; above it the backward
#: calls torchvision's kernel (each sample holds four corners of indices and weights).
MAX_PADDED_SAMPLES = 1 << 22


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _axis_terms(start, bin_size, grid, size, pooled: int, grid_max: int):
    """Bilinear terms along the y (row 0) and x (row 1) axes, as torchvision's CPU kernel has them.

    Args:
        start, bin_size (Tensor): (2, R) ROI start and bin size on the feature map.
        grid (Tensor): (2, R) samples per bin (float, may be <= 0).
        size (Tensor): (2, 1, 1, 1) int64 feature map height and width.
        pooled (int): bins per axis, padded to the larger of the two.
        grid_max (int): samples per bin, padded to the largest of all.

    Returns:
        low, high (Tensor): (2, R, pooled, grid_max) int64 corner coordinates.
        frac, rest (Tensor): (2, R, pooled, grid_max) weights of ``high`` (the kernel's ly, lx)
            and ``low`` (hy, hx).
        valid (Tensor): (2, R, pooled, grid_max) bool: inside [-1, size] and within the grid.
    """
    dtype = start.dtype
    p = torch.arange(pooled, dtype=dtype)[:, None]
    i = torch.arange(grid_max, dtype=dtype)
    start, bin_size, grid = start[..., None, None], bin_size[..., None, None], grid[..., None, None]
    # roi_start + p * bin_size + (i + .5) * bin_size / grid, left to right as in C++
    c = (start + p * bin_size) + ((i + 0.5) * bin_size) / grid
    valid = (c >= -1.0) & (c <= size) & (i < grid)
    c = c.clamp(min=0)
    low = c.to(torch.int64)  # c >= 0: truncation == floor
    edge = low >= size - 1
    high = torch.minimum(low + 1, size - 1)
    low = torch.minimum(low, size - 1)
    frac = torch.where(edge, 0.0, c - low.to(dtype))  # the kernel sets y = y_low at the edge
    return low, high, frac, 1.0 - frac, valid


def _backward_cpu(grad, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, shape):
    """Gradient w.r.t. the (B, C, H, W) input of ``shape``.

    Args:
        grad (Tensor): (R, C, PH, PW) gradient of the output, in the compute dtype.
        rois (Tensor): (R, 5) ROIs in the compute dtype.
        spatial_scale, sampling_ratio, aligned: as :func:`roi_align`.
        pooled_h, pooled_w (int): PH, PW.
        shape (tuple): (B, C, H, W).

    Returns:
        Tensor: (B, C, H, W) gradient in ``grad``'s dtype (channels-last strides), or None when
        the adaptive grid is too large to vectorise.
    """
    batch, channels, height, width = shape
    dtype = grad.dtype
    num_rois = rois.shape[0]
    out = torch.zeros(batch * height * width, channels, dtype=dtype)
    result = out.view(batch, height, width, channels).permute(0, 3, 1, 2)
    if num_rois == 0 or out.numel() == 0:
        return result
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=dtype)  # the kernel's `const T& spatial_scale`
    start = rois[:, [2, 1]].t() * scale - offset  # (2, R): y, x
    side = (rois[:, [4, 3]].t() * scale - offset) - start
    if not aligned:
        side = side.clamp(min=1.0)
    pooled = torch.tensor([[pooled_h], [pooled_w]], dtype=dtype)
    bin_size = side / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(side, float(sampling_ratio))
        gh_max = gw_max = sampling_ratio
    else:
        grid = torch.ceil(side / pooled)
        gh_max, gw_max = grid.amax(dim=1).clamp(min=0).to(torch.int64).tolist()
        if num_rois * pooled_h * pooled_w * gh_max * gw_max > MAX_PADDED_SAMPLES:
            logger.debug("adaptive ROIAlign grid %dx%d: torchvision's backward", gh_max, gw_max)
            return None
        if gh_max == 0 or gw_max == 0:
            return result
    size = torch.tensor([height, width]).view(2, 1, 1, 1)
    low, high, frac, rest, valid = _axis_terms(
        start, bin_size, grid, size, max(pooled_h, pooled_w), max(gh_max, gw_max)
    )

    # (R, PH, PW, GH, GW[, 2, 2]): torchvision's order of one channel's samples and corners
    def ys(t):
        return t[0, :, :pooled_h, :gh_max][:, :, None, :, None]

    def xs(t):
        return t[1, :, :pooled_w, :gw_max][:, None, :, None, :]

    per_bin = gh_max * gw_max
    base = rois[:, 0].to(torch.int64).view(-1, 1, 1, 1, 1, 1, 1) * (height * width)
    index = (base + ys(torch.stack([low, high], -1) * width)[..., None]) + xs(
        torch.stack([low, high], -1)
    )[..., None, :]
    pair = torch.stack([rest, frac], -1)  # (hy, ly) / (hx, lx)
    weight = ys(pair)[..., None] * xs(pair)[..., None, :]
    valid = ys(valid) & xs(valid)
    count = grid[0] * grid[1]  # per ROI; a ROI has samples only if count >= 1
    divide = sampling_ratio <= 0 or sampling_ratio > 1
    if bool(valid.all()):
        # every sample inside: rows of the permuted gradient broadcast over samples and corners
        rows = grad.permute(0, 2, 3, 1).reshape(-1, 1, channels)  # (R*PH*PW, 1, C)
        source = rows * weight.view(rows.shape[0], per_bin * 4, 1)  # (R*PH*PW, GH*GW*4, C)
        if divide:
            source.view(num_rois, -1, channels).div_(count[:, None, None])
        index = index.flatten()
    else:
        sample = valid.flatten().nonzero().squeeze(1)
        rows = grad.permute(0, 2, 3, 1).reshape(-1, channels).index_select(0, sample // per_bin)
        source = rows[:, None, :] * weight.view(-1, 4)[sample][:, :, None]  # (S, 4, C): g * w
        if divide:
            roi_of_sample = sample // (per_bin * pooled_h * pooled_w)
            source.div_(count[roi_of_sample][:, None, None])  # (g * w) / count
        index = index.view(-1, 4)[sample].flatten()
    out.index_add_(0, index, source.view(-1, channels))
    return result


class _ROIAlignCPU(torch.autograd.Function):
    """torchvision's forward; vectorised backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        dtype = _compute_dtype(input.dtype)
        rois_c = rois.to(dtype)
        with torch.autocast("cpu", enabled=False):
            out = tv_roi_align(
                input.to(dtype), rois_c, output_size, spatial_scale, sampling_ratio, aligned
            )
        ctx.save_for_backward(rois_c)
        ctx.args = (output_size, spatial_scale, sampling_ratio, aligned)
        ctx.input_shape, ctx.input_dtype = tuple(input.shape), input.dtype
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        (rois,) = ctx.saved_tensors
        (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned = ctx.args
        grad = grad_output.to(rois.dtype).contiguous()
        shape = ctx.input_shape
        grad_input = _backward_cpu(
            grad, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, shape
        )
        if grad_input is None:
            grad_input = torch.ops.torchvision._roi_align_backward(
                grad, rois, spatial_scale, pooled_h, pooled_w, *shape, sampling_ratio, aligned
            )
        return grad_input.to(ctx.input_dtype).contiguous(), None, None, None, None, None


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (same arguments and result) with a fast CPU backward.

    Args:
        input (Tensor): (B, C, H, W) feature map.
        rois (Tensor): (R, 5) boxes ``(batch index, x1, y1, x2, y2)`` in input-image coordinates.
        output_size (int or (int, int)): pooled (height, width).
        spatial_scale (float): factor from box coordinates to feature-map coordinates.
        sampling_ratio (int): samples per bin side; <= 0: ``ceil(roi_side / pooled_side)``.
        aligned (bool): shift the scaled boxes by -0.5 pixel (detectron2's ROIAlignV2).

    Returns:
        Tensor: (R, C, PH, PW) pooled features in ``input``'s dtype.
    """
    output_size = _pair(output_size)
    if input.device.type != "cpu" or input.is_quantized:
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError(f"rois must be an (R, 5) tensor, got {getattr(rois, 'shape', rois)}")
    return _ROIAlignCPU.apply(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


class ROIAlign(_D2ROIAlign):
    """Drop-in for ``detectron2.layers.ROIAlign`` using :func:`roi_align` (same arguments)."""

    def forward(self, input, rois):
        """
        Args:
            input (Tensor): (B, C, H, W) feature map.
            rois (Tensor): (R, 5) boxes; column 0 is the index into B, the others are xyxy.

        Returns:
            Tensor: (R, C, *output_size).
        """
        assert rois.dim() == 2 and rois.size(1) == 5
        if input.is_quantized:
            input = input.dequantize()
        return roi_align(
            input,
            rois.to(dtype=input.dtype),  # as detectron2 (bf16 rois under autocast)
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
        )
