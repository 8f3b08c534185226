"""Building blocks of the factorized CP path whose backward stays fast on CPU.

``project_in`` / ``project_out`` are the 1x1 convolutions ``C_in -> R`` and ``R -> C_out`` as
batched matrix products that read and write the layouts the neighbours want (the input and
output in ``(B, C, N)`` order, the rank-R intermediate channels-last ``(B, N, R)``), forward and
backward, so no transposing copy is ever made.

``depthwise_axis_conv``: a depthwise convolution along one spatial axis.

oneDNN runs a depthwise convolution with a ``(k, 1, 1)`` kernel on a channels-last tensor fast
in the forward pass but not in the backward (no fast kernel for its gradients on x86 CPUs with
torch 2.13). Here the input gradient is itself a depthwise convolution (the
flipped kernel for stride 1, a transposed convolution otherwise) and the kernel gradient is ``k``
multiply-and-reduce passes over the overlapping ranges of the input and the output gradient,
never materializing a padded copy.

All backwards are built from differentiable ops (double backward works) and run in the dtype
of the incoming gradient (under autocast the forward ran in bf16/fp16; autograd casts the
returned gradients to the inputs' dtypes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["depthwise_axis_conv", "project_in", "project_out"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _params(n: int, axis: int, value: int, fill: int) -> list[int]:
    out = [fill] * n
    out[axis] = value
    return out


def _kernel(weight: torch.Tensor, n: int, axis: int) -> torch.Tensor:
    shape = [weight.shape[0], 1, *([1] * n)]
    shape[2 + axis] = weight.shape[1]
    return weight.reshape(shape)


class _DepthwiseAxisConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, axis, stride, padding, dilation):
        n = z.dim() - 2
        ctx.save_for_backward(z, weight)
        ctx.config = (axis, stride, padding, dilation)
        return _CONV[n](
            z,
            _kernel(weight, n, axis),
            None,
            _params(n, axis, stride, 1),
            _params(n, axis, padding, 0),
            _params(n, axis, dilation, 1),
            weight.shape[0],
        )

    @staticmethod
    def backward(ctx, grad):
        z, weight = (t.to(grad.dtype) for t in ctx.saved_tensors)  # autocast: grads may be bf16/fp16
        axis, stride, padding, dilation = ctx.config
        if z.dim() in _LAST and z.is_contiguous(memory_format=_LAST[z.dim()]):
            grad = grad.contiguous(memory_format=_LAST[z.dim()])  # one copy; keeps oneDNN on its fast path
        n, channels, k = z.dim() - 2, weight.shape[0], weight.shape[1]
        dim = 2 + axis
        length, out_length = z.shape[dim], grad.shape[dim]
        grad_z = grad_w = None
        if ctx.needs_input_grad[0]:
            back = dilation * (k - 1) - padding
            if stride == 1 and back >= 0:
                grad_z = _CONV[n](
                    grad,
                    _kernel(weight.flip(1), n, axis),
                    None,
                    1,
                    _params(n, axis, back, 0),
                    _params(n, axis, dilation, 1),
                    channels,
                )
            else:
                extra = length - ((out_length - 1) * stride - 2 * padding + dilation * (k - 1) + 1)
                grad_z = _CONV_T[n](
                    grad,
                    _kernel(weight, n, axis),
                    None,
                    _params(n, axis, stride, 1),
                    _params(n, axis, padding, 0),
                    _params(n, axis, extra, 0),
                    channels,
                    _params(n, axis, dilation, 1),
                )
        if ctx.needs_input_grad[1]:
            reduce = [d for d in range(z.dim()) if d != 1]
            taps = []
            for a in range(k):
                # output o reads input i = stride * o + dilation * a - padding; keep 0 <= i < length
                shift = dilation * a - padding
                first = (-shift + stride - 1) // stride if shift < 0 else 0
                last = min(out_length - 1, (length - 1 - shift) // stride)
                if last < first:
                    taps.append(grad.new_zeros(channels))
                    continue
                count = last - first + 1
                start = stride * first + shift
                z_part = z.narrow(dim, start, (count - 1) * stride + 1)
                if stride > 1:
                    index = [slice(None)] * z.dim()
                    index[dim] = slice(None, None, stride)
                    z_part = z_part[tuple(index)]
                taps.append((z_part * grad.narrow(dim, first, count)).sum(reduce))
            grad_w = torch.stack(taps, 1)
        return grad_z, grad_w, None, None, None, None


def depthwise_axis_conv(
    z: torch.Tensor, weight: torch.Tensor, axis: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> torch.Tensor:
    """Depthwise convolution of ``z (B, C, *S)`` along spatial ``axis`` with ``weight (C, k)``.

    Args:
        z: input, best in channels-last memory order.
        weight: one length-``k`` filter per channel.
        axis: the spatial axis (0-based, after batch and channel).
        stride: stride along ``axis``.
        padding: symmetric zero padding along ``axis``.
        dilation: dilation along ``axis``.

    Returns:
        ``(B, C, *S')``, equal to ``F.convNd(z, weight as (C, 1, ..k..), groups=C)``.
    """
    return _DepthwiseAxisConv.apply(z, weight, axis, stride, padding, dilation)


class _ProjectIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.save_for_backward(x, factor)
        return torch.bmm(x.transpose(1, 2), factor.expand(x.shape[0], -1, -1))

    @staticmethod
    def backward(ctx, grad):
        x, factor = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_x = grad_f = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(factor.expand(x.shape[0], -1, -1), grad.transpose(1, 2))
        if ctx.needs_input_grad[1]:
            grad_f = torch.bmm(x, grad).sum(0)
        return grad_x, grad_f


class _ProjectOut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, factor, bias):
        ctx.save_for_backward(z, factor)
        ctx.has_bias = bias is not None
        batched = factor.expand(z.shape[0], -1, -1)
        if bias is None:
            return torch.bmm(batched, z.transpose(1, 2))
        return torch.baddbmm(bias[None, :, None], batched, z.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad):
        z, factor = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_z = grad_f = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.bmm(grad.transpose(1, 2), factor.expand(z.shape[0], -1, -1))
        if ctx.needs_input_grad[1]:
            grad_f = torch.bmm(grad, z).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2))
        return grad_z, grad_f, grad_b


def project_in(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x (B, C, N)`` times ``factor (C, R)`` -> ``(B, N, R)`` (a 1x1 convolution into rank space)."""
    return _ProjectIn.apply(x, factor)


def project_out(z: torch.Tensor, factor: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``factor (C, R)`` times ``z (B, N, R)`` plus ``bias (C,)`` -> ``(B, C, N)`` (a 1x1 convolution)."""
    return _ProjectOut.apply(z, factor, bias)
