"""The U-Net skeleton every net of :mod:`lowrank.nets` is a spec over.

Layout for ``L = len(channels)`` resolution levels (``C_l = channels[l]``)::

    stem (3×3×3 conv in → C_0, optional)
    encoder: level 0 stage; level l ≥ 1: down (strided conv C_{l-1} → C_l, or max-pool) → stage
    bottleneck (level L-1): + learnable position embedding (optional) before its stage
    decoder, level l = L-2 … 0: up (transposed conv C_{l+1} → C_l) → concat [skip, up] → stage
    heads: 1×1 convs on the ``deep_supervision`` highest-resolution decoder outputs

A *stage* is ``depth`` blocks (a ``block`` spec, or one per stage in ``stage_blocks``). Its first
block receives the stage's input channels: blocks that accept ``in_channels`` (the conv blocks)
change the width themselves; for shape-preserving blocks (``factorizer``, ``hamburger``, ...) the
stage starts with a bias-free 1×1 *adapter* (the reference implementation's). Blocks that accept
``conv`` receive the net's ``conv`` spec (``first_level_conv`` at level 0, when given).

Any input size: the input is zero-padded at the end of each axis to a multiple of the total
stride and the outputs are cropped back.

One output rule for every net (:data:`DEEP_SUPERVISION_RULE`): deep supervision is off by
default, so the forward returns one tensor in training and in eval, like MONAI's nets (a plain
``DiceCELoss`` works); ``deep_supervision=k > 1`` opts in: in training the forward then returns
the list of ``k`` logits at their native resolutions (highest first) that MONAI's
``DeepSupervisionLoss`` takes, and one tensor in eval (``sliding_window_inference`` works).

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> net = build_net("unet_skeleton(channels=[8, 16, 32], block=residual)", 2, 3, spatial_dims=2)
    >>> net.eval()(torch.randn(1, 2, 30, 17)).shape
    torch.Size([1, 3, 30, 17])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from ..blocks._layers import PointwiseConv, accepts, as_tuple, pointwise
from ..build import BlockSpec, ConvSpec, as_spec, build_block, build_conv
from ..export import script_error
from ..registry import register
from ..spec import Spec

__all__ = ["DEEP_SUPERVISION_RULE", "UNetSkeleton", "Stage", "PositionEmbedding"]

#: The training-mode output rule, quoted in every net's docstring.
DEEP_SUPERVISION_RULE = (
    "Deep supervision is off by default: the forward returns one tensor ``(B, out_channels, *S)`` "
    "in training and in eval, like MONAI's nets, so a plain MONAI ``DiceCELoss`` works. "
    "``deep_supervision=k > 1`` opts in: in training the forward then returns a list of ``k`` "
    "logits, highest resolution first (the ``l``-th of size ``ceil(S / stride_l)``), the input "
    "of MONAI's ``DeepSupervisionLoss``; in eval still one tensor."
)


class PositionEmbedding(nn.Module):
    """Learnable additive position embedding, resized by interpolation to the runtime size.

    Args:
        channels: ``C``.
        size: the spatial size it is learned for.
        std: std of the (truncated) normal initialization; small, so it starts near zero.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``; when ``S != size`` the embedding is (bi/tri)linearly
        interpolated to ``S``.
    """

    def __init__(self, channels: int, size: Sequence[int], std: float = 0.02):
        super().__init__()
        self.size = tuple(int(s) for s in size)
        self.pos = nn.Parameter(torch.empty(1, channels, *self.size))
        nn.init.trunc_normal_(self.pos, std=std, a=-2 * std, b=2 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the embedding to ``x: (B, C, *S)``."""
        pos = self.pos.to(x.dtype)
        if tuple(x.shape[2:]) != self.size:
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(self.size)]
            pos = F.interpolate(pos, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return x + pos

    def extra_repr(self) -> str:
        return f"channels={self.pos.shape[1]}, size={self.size}"


class Stage(nn.Module):
    """One U-Net stage: an optional 1×1 adapter, then ``depth`` blocks.

    Attributes:
        adapter: bias-free 1×1 conv to the stage width, or ``None``.
        blocks: the blocks, in order.
    """

    def __init__(self, adapter: nn.Module | None, blocks: Sequence[nn.Module]):
        super().__init__()
        self.adapter = adapter
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, *more: torch.Tensor) -> torch.Tensor:
        """Apply the adapter and the blocks to ``x``, or to ``cat([x, *more], 1)``.

        A 1×1 adapter consumes the pieces without materializing their concatenation.
        """
        if self.adapter is not None:
            x = self.adapter(x, *more)
        elif more:
            x = torch.cat([x, *more], dim=1)
        for block in self.blocks:
            x = block(x)
        return x


def _upsample(conv: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """The transposed conv; on CPU a 3-D float32 map enters it channels-last.

    oneDNN computes a transposed 3-D conv in channels-last and, for a contiguous input, reorders
    its output back, a full extra pass over the 8× larger output (timed in bench/README.md,
    ``bench/bench_cpu_paths.py``). The next stage takes the channels-last output as is (its 1×1
    adapter reads strided pieces; a concatenation copies anyway).
    """
    cpu32 = h.device.type == "cpu" and h.dtype == torch.float32
    if h.dim() == 5 and cpu32 and not torch.compiler.is_compiling():
        h = h.contiguous(memory_format=torch.channels_last_3d)
    return conv(h)


class _PointwiseHead:
    """A 1×1 ``ConvNd`` head computed as one matrix product over the channels.

    Same parameters, state dict and initialization as the ``ConvNd``; the conv itself would copy
    its input to channels-last (a 1×1 weight looks channels-last to the CPU backend), forward
    and backward.
    """

    # declared by the ``ConvNd`` it is mixed into
    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, *S) -> (B, C_out, *S)``."""
        return pointwise(self.weight.flatten(1), self.bias, x)


class _Head1d(_PointwiseHead, nn.Conv1d):
    pass


class _Head2d(_PointwiseHead, nn.Conv2d):
    pass


class _Head3d(_PointwiseHead, nn.Conv3d):
    pass


_HEADS = {1: _Head1d, 2: _Head2d, 3: _Head3d}


def _with(spec: Any, key: str, value: Any, kind: str = "block") -> dict:
    """``{key: value}`` if the part takes ``key`` and its spec does not set it already."""
    normalized = as_spec(spec)
    if isinstance(normalized, Spec) and key in normalized.kwargs:
        return {}
    return {key: value} if accepts(kind, normalized, key) else {}


@register("net", "unet_skeleton", test_spec="unet_skeleton(channels=[4, 8], block=double_conv)", test_size=8)
class UNetSkeleton(nn.Module):
    """Generic U-Net: stem, encoder, bottleneck, decoder, heads; a block spec per stage.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes).
        spatial_dims: 1, 2 or 3.
        channels: widths per resolution level, highest resolution first (``L`` levels).
        block: the block of every stage (a ``block`` spec).
        stage_blocks: one block spec per stage (``2L-1``: encoder levels 0…L-1, then decoder
            levels L-2…0), overriding ``block``.
        depth: blocks per stage, an int or one per stage.
        strides: the ``L-1`` downsampling strides (an int or one per axis each; default 2).
        stem: start with a 3×3×3 conv ``in_channels → C_0`` (else the first stage takes the input).
        down: ``"conv"`` (kernel = stride, the Factorizer's) or ``"maxpool"`` (thesis ch. 8).
        up_kernel: transposed-conv kernel; ``None`` = the stride (2×2×2), an odd int (e.g. 3)
            pads to keep exact doubling.
        conv: conv spec for the stem and for blocks that take ``conv``.
        first_level_conv: conv spec at level 0 (stem and the level-0 stages) instead of ``conv``.
        pos_embed_size: input size the bottleneck position embedding is learned for (``None``:
            no embedding); other sizes interpolate it.
        deep_supervision: number of heads: 1 (default) = no deep supervision, one tensor out;
            ``k > 1``: a list of ``k`` logits in training (see the output rule below).
        adapter_bias: give the 1×1 adapters a bias.

    Shapes:
        ``(B, in_channels, *S) -> (B, out_channels, *S)``; in training with
        ``deep_supervision = k > 1`` a list of ``k`` tensors, the ``l``-th of size
        ``ceil(S / stride_l)``, highest resolution first.

    Note:
        {rule}

    Raises:
        ValueError: inconsistent lengths or values, reported at build time.
    """

    __doc__ = __doc__.replace("{rule}", DEEP_SUPERVISION_RULE)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 3,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        block: BlockSpec = "double_conv",
        stage_blocks: Sequence[BlockSpec] | None = None,
        depth: int | Sequence[int] = 1,
        strides: Sequence[int | Sequence[int]] | None = None,
        stem: bool = True,
        down: Literal["conv", "maxpool"] = "conv",
        up_kernel: int | None = None,
        conv: ConvSpec = "dense",
        first_level_conv: ConvSpec | None = None,
        pos_embed_size: int | Sequence[int] | None = None,
        deep_supervision: int = 1,
        adapter_bias: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"need positive channels, got channels={channels}, in={in_channels}, out={out_channels}"
            )
        levels = len(channels)
        n_stages = 2 * levels - 1
        strides = [2] * (levels - 1) if strides is None else list(strides)
        if len(strides) != levels - 1:
            raise ValueError(
                f"strides needs {levels - 1} entries (one per downsampling, between the {levels} "
                f"levels of channels={channels}), got {len(strides)}"
            )
        self.strides = [as_tuple(s, spatial_dims, "a stride") for s in strides]
        if any(s < 1 for st in self.strides for s in st):
            raise ValueError(f"strides must be >= 1, got {strides}")
        depths = [depth] * n_stages if isinstance(depth, int) else list(depth)
        if len(depths) != n_stages or min(depths) < 1:
            raise ValueError(f"depth needs an int >= 1 or {n_stages} of them (one per stage), got {depth}")
        specs = [block] * n_stages if stage_blocks is None else list(stage_blocks)
        if len(specs) != n_stages:
            raise ValueError(
                f"stage_blocks needs {n_stages} specs (encoder levels 0..{levels - 1}, then decoder "
                f"levels {levels - 2}..0), got {len(specs)}"
            )
        max_heads = max(1, levels - 1)
        if not 1 <= deep_supervision <= max_heads:
            raise ValueError(f"deep_supervision must be in [1, {max_heads}] for {levels} levels")
        if up_kernel is not None and (up_kernel < 1 or up_kernel % 2 == 0):
            raise ValueError(f"up_kernel must be None (= the stride) or an odd int, got {up_kernel}")

        self.spatial_dims, self.levels, self.deep_supervision = spatial_dims, levels, deep_supervision
        cum = [(1,) * spatial_dims]
        for st in self.strides:
            cum.append(tuple(a * b for a, b in zip(cum[-1], st)))
        self.cumulative_strides = cum
        self.total_stride = cum[-1]

        def level_conv(level: int):
            return first_level_conv if (level == 0 and first_level_conv is not None) else conv

        def make_stage(index: int, level: int, cin: int) -> Stage:
            cout, spec = channels[level], specs[index]
            extra = _with(spec, "conv", level_conv(level))
            in_kw = _with(spec, "in_channels", cin) if cin != cout else {}
            adapter = None
            if cin != cout and not in_kw:
                adapter = PointwiseConv(cin, cout, bias=adapter_bias)
                cin = cout
            blocks = []
            for j in range(depths[index]):
                kw = {**extra, **(in_kw if j == 0 else {})}
                blocks.append(build_block(spec, cout, spatial_dims=spatial_dims, **kw))
            return Stage(adapter, blocks)

        if stem:
            self.stem = build_conv(
                level_conv(0), in_channels, channels[0], 3, spatial_dims=spatial_dims, padding=1
            )
            width = channels[0]
        else:
            self.stem = None
            width = in_channels
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        stages = [make_stage(0, 0, width)]
        for level in range(1, levels):
            stride = self.strides[level - 1]
            if down == "conv":
                self.downs.append(
                    build_conv(
                        "dense",
                        channels[level - 1],
                        channels[level],
                        stride,
                        stride=stride,
                        spatial_dims=spatial_dims,
                    )
                )
                cin = channels[level]
            else:
                self.downs.append(Pool[Pool.MAX, spatial_dims](kernel_size=stride, stride=stride))
                cin = channels[level - 1]
            stages.append(make_stage(level, level, cin))
        self.pos_embed = None
        if pos_embed_size is not None:
            size = as_tuple(pos_embed_size, spatial_dims, "pos_embed_size")
            size = tuple(math.ceil(s / t) for s, t in zip(size, self.total_stride))
            self.pos_embed = PositionEmbedding(channels[-1], size)
        for level in range(levels - 2, -1, -1):
            stride = self.strides[level]
            if up_kernel is None:
                kernel, padding, out_pad = stride, 0, 0
            else:
                kernel = (up_kernel,) * spatial_dims
                padding = tuple((up_kernel - 1) // 2 for _ in stride)
                out_pad = tuple(s - 1 for s in stride)
            self.ups.append(
                Conv[Conv.CONVTRANS, spatial_dims](
                    channels[level + 1],
                    channels[level],
                    kernel,
                    stride=stride,
                    padding=padding,
                    output_padding=out_pad,
                )
            )
            stages.append(make_stage(2 * levels - 2 - level, level, 2 * channels[level]))
        #: the stages in network order: encoder levels 0..L-1, then decoder levels L-2..0
        self.stages = nn.ModuleList(stages)
        head_levels = range(deep_supervision) if levels > 1 else [0]
        self.heads = nn.ModuleList(_HEADS[spatial_dims](channels[lv], out_channels, 1) for lv in head_levels)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` hook: not supported, one clear error (use torch.export / ONNX)."""
        raise script_error(self)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        size = tuple(x.shape[2:])
        if len(size) != self.spatial_dims:
            raise ValueError(
                f"expected an input (B, C, *S) with {self.spatial_dims} spatial axes, got {tuple(x.shape)}"
            )
        extra = [(-s) % m for s, m in zip(size, self.total_stride)]
        if any(extra):
            pads: list[int] = []
            for e in reversed(extra):
                pads += [0, e]
            x = F.pad(x, pads)
        return x, size

    @staticmethod
    def _crop(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        index = (slice(None), slice(None), *(slice(0, s) for s in size))
        return y[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x: (B, in_channels, *S)``; see the class docstring for the output."""
        if torch.jit.is_tracing():
            raise script_error(self, traced=True)
        x, size = self._pad(x)
        h = self.stem(x) if self.stem is not None else x
        levels = self.levels
        skips = []
        for level in range(levels):
            if level > 0:
                h = self.downs[level - 1](h)
            if level == levels - 1 and self.pos_embed is not None:
                h = self.pos_embed(h)
            h = self.stages[level](h)
            skips.append(h)
        want_all = self.training and self.deep_supervision > 1
        outputs: dict[int, torch.Tensor] = {}
        if levels == 1:
            outputs[0] = self.heads[0](h)
        for j, level in enumerate(range(levels - 2, -1, -1)):
            h = _upsample(self.ups[j], h)
            h = self.stages[levels + j](skips[level], h)  # concat [skip, up] (fused into an adapter)
            if level == 0 or (want_all and level < self.deep_supervision):
                outputs[level] = self.heads[level](h)
        main = self._crop(outputs[0], size)
        if not want_all:
            return main
        result = [main]
        for level in range(1, self.deep_supervision):
            cum = self.cumulative_strides[level]
            result.append(self._crop(outputs[level], [math.ceil(s / c) for s, c in zip(size, cum)]))
        return result
