"""Factorizer block (Ashtari et al., Factorizer, §3.3–3.4): a ViT block with NMF as the mixer.

For a feature map ``x: (B, C, *S)`` (pre-norm, two residual branches)::

    x = x + drop(out_proj(dematricize(mixer(act(matricize(in_proj(norm1(x))))))))
    x = x + mlp(norm2(x))                       # mlp = 1×1 conv → GELU → drop → 1×1 conv → drop

- ``in_proj`` is a bias-free 1×1 conv ``C → inner`` (``inner = inner_ratio·C``), ``out_proj`` a
  1×1 conv ``inner → C`` with bias (the reference implementation's "Wrapped NMF");
- ``matricize`` views the map as a batch of matrices ``(B', M, N)`` (``global``, ``local``,
  ``swin``, ...), ``act`` (ReLU by default) makes them non-negative for NMF, ``mixer`` (any
  factorization layer, ``nmf(rank=1, iters=5)`` by default) returns their low-rank
  reconstruction, and the matricizer's exact inverse maps it back; padded columns (sizes that do
  not divide the patch) are passed to the mixer as ``mask`` so they do not change the factors;
- ``norm1``/``norm2`` are LayerNorms over the channels (``norm="layer"``) or any MONAI norm.

With the paper's BraTS widths, ``mlp_ratio=2`` gives ``6C² + 8C`` parameters per block.

Fast paths (same parameters and results): a channel LayerNorm's affine part is folded into the
following projection (its output is never materialized), the residuals are added in the
projections' output buffers, the mixer's ReLU works in place, and on CPU (float32/64, no
autocast, no compile, no active dropout) the MLP branch runs as one chunked kernel
(:mod:`lowrank.blocks._fused_mlp`) that saves only its input for backward. On the ``triton``
kernel backend (float32/64, no autocast, widths up to 64 / hidden 128) the MLP branch and the
LayerNorm + ``in_proj`` (+ ReLU) each run as one Triton kernel (:mod:`lowrank.kernels.mlp`).

Inference-time controls: set ``block.skip_mixer = True`` to short-circuit the mixer branch
(Factorizer paper §4.5, "NMF layer" ablation); see :mod:`lowrank.controls`.

Example:
    >>> import torch
    >>> from lowrank import build_block
    >>> block = build_block("factorizer(mixer=nmf(rank=1, iters=3), matricize=swin(patch=4, head_dim=8))", 16)
    >>> block(torch.randn(1, 16, 8, 8, 8)).shape
    torch.Size([1, 16, 8, 8, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from ..build import LayerSpec, MatricizeSpec, SolverSpec, build_matricize, build_solver
from ..kernels.mlp import mlp_backend, norm_project, norm_project_backend
from ..matricize.base import Matricize, MatricizeContext
from ..registry import register
from ..solvers.base import Factorization
from ._fused_mlp import fused_mlp
from ._layers import ChannelLayerNorm, PointwiseConv, channel_standardize, make_act, make_norm, pointwise

__all__ = ["Factorizer", "FactorizerMLP"]


def _fold_affine(norm: ChannelLayerNorm, proj: PointwiseConv) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``proj ∘ norm``'s affine part as one projection: ``(W diag γ, W β + b)``.

    ``W (γ ⊙ x̂ + β) + b = (W diag γ) x̂ + (W β + b)``; ``W β`` is an element-wise product and a
    sum (not a counted matmul).
    """
    weight = proj.weight * norm.weight.to(proj.weight.dtype)
    bias = (proj.weight * norm.bias.to(proj.weight.dtype)).sum(1)
    return weight, bias if proj.bias is None else bias + proj.bias


def _matrix_rows(matricize: nn.Module, channels: int) -> int | None:
    """The row count M of the matrices a matricizer makes from ``channels`` channels, when it is
    known at build time: the head dim ``E`` for the views whose rows are channels (``global``,
    ``local``, ``swin``); ``None`` for the channel view (rows = voxels) and unknown modules."""
    if not isinstance(matricize, Matricize) or matricize.spatial_factor_index != 1:
        return None
    if matricize.head_dim is not None:
        return matricize.head_dim
    return channels // matricize.heads if matricize.heads else None


def _pass_rows(solver: nn.Module, rows: int | None) -> None:
    """Size the solver's init tables for ``rows``-row matrices now (see ``Factorization.set_rows``)."""
    if rows is not None and isinstance(solver, Factorization):
        solver.set_rows(rows)


def _inactive(drop: nn.Dropout) -> bool:
    """Whether a dropout layer is the identity now."""
    return drop.p == 0.0 or not drop.training


class FactorizerMLP(nn.Module):
    """Two 1×1 convs with an activation in between: ``C → hidden → C``.

    Args:
        channels: ``C``.
        hidden: inner channels.
        act: MONAI activation spec.
        dropout: dropout after the activation and after the second conv.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(self, channels: int, hidden: int, act: LayerSpec = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = PointwiseConv(channels, hidden)
        self.act = make_act(act)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = PointwiseConv(hidden, channels)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x: (B, C, *S)``."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


@register(
    "block",
    "factorizer",
    test_spec="factorizer(mixer=nmf(rank=1, iters=2), matricize=swin(patch=4, head_dim=4))",
    test_size=8,
)
class Factorizer(nn.Module):
    """Factorizer block: pre-norm matrix-factorization mixer + MLP, each with a residual.

    Args:
        channels: ``C``, the block's input and output channels.
        spatial_dims: 1, 2 or 3.
        mixer: the factorization layer (a ``solver`` spec), applied to ``(B', M, N)`` matrices.
        matricize: how the map becomes matrices (a ``matricize`` spec); it must accept
            ``inner = inner_ratio·C`` channels (e.g. ``head_dim`` dividing it).
        mlp_ratio: MLP inner width over ``C`` (BraTS 2, ISLES 4); ``0`` removes the MLP branch.
        inner_ratio: width of the mixer branch over ``C`` (the paper uses 1).
        norm: the two pre-norms: ``"layer"`` (LayerNorm over channels, the paper's) or any MONAI
            norm spec; ``None`` for none.
        act: the MLP's activation (GELU in the paper).
        mixer_act: applied to the matrices before the mixer; ``"relu"`` makes them non-negative
            (needed by NMF); ``None`` for signed solvers (``semi_nmf``, ``vq``, ``cd``).
        dropout: dropout on the mixer branch's output and inside the MLP.

    Shapes:
        ``(B, C, *S) -> (B, C, *S)``, any ``S`` the matricizer accepts.

    Raises:
        ValueError: a bad ratio or dropout; the matricizer's own errors (e.g. a head dimension
            that does not divide the inner channels) at build time.
    """

    def __init__(
        self,
        channels: int,
        *,
        spatial_dims: int = 3,
        mixer: SolverSpec = "nmf(rank=1, iters=5)",
        matricize: MatricizeSpec = "swin(patch=8, head_dim=8)",
        mlp_ratio: float = 2.0,
        inner_ratio: float = 1.0,
        norm: LayerSpec = "layer",
        act: LayerSpec = "gelu",
        mixer_act: LayerSpec = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        if channels < 1:
            raise ValueError(f"factorizer needs channels >= 1, got {channels}")
        if mlp_ratio < 0 or inner_ratio <= 0:
            raise ValueError(
                f"factorizer needs mlp_ratio >= 0 and inner_ratio > 0, got {mlp_ratio} and {inner_ratio}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"factorizer dropout must be in [0, 1), got {dropout}")
        inner = max(1, round(inner_ratio * channels))
        self.channels, self.inner_channels, self.spatial_dims = channels, inner, spatial_dims
        #: set to True to short-circuit the mixer branch (inference-time ablation)
        self.skip_mixer = False
        self.norm1 = make_norm(norm, channels, spatial_dims)
        self.in_proj = PointwiseConv(channels, inner, bias=False)
        self.mixer_act = make_act(mixer_act)
        self.matricize = build_matricize(matricize, inner, spatial_dims=spatial_dims)
        self.mixer = build_solver(mixer)
        _pass_rows(self.mixer, _matrix_rows(self.matricize, inner))
        self.out_proj = PointwiseConv(inner, channels)
        self.drop = nn.Dropout(dropout)
        hidden = round(mlp_ratio * channels)
        if hidden > 0:
            self.norm2 = make_norm(norm, channels, spatial_dims)
            self.mlp = FactorizerMLP(channels, hidden, act=act, dropout=dropout)
        else:
            self.norm2 = None
            self.mlp = None

    @staticmethod
    def _normed(norm: nn.Module, proj: PointwiseConv, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """``proj(norm(x))``; a channel LayerNorm's affine part is folded into the projection.

        ``W (γ ⊙ x̂ + β) = (W diag γ) x̂ + W β``: the standardized ``x̂`` (saved by the norm anyway)
        is the projection's input, so the affine output is never materialized nor saved.
        """
        if (
            not isinstance(norm, ChannelLayerNorm)
            or norm.weight is None
            or x.ndim < 2
            or x.shape[1] != norm.channels  # let the norm raise its error
        ):
            return pointwise(proj.weight, proj.bias, norm(x), relu=relu)
        weight, bias = _fold_affine(norm, proj)
        if norm_project_backend(x, weight) == "triton":  # one kernel: x̂ never in memory
            return norm_project(x, weight, bias, norm.eps, relu)
        return pointwise(weight, bias, channel_standardize(x, norm.eps), relu=relu)

    def _mix_inner(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer branch up to (and without) ``out_proj``: ``(B, C, *S) -> (B, inner, *S)``."""
        # the projection's output is fresh and not saved by it: ReLU can work in place
        if type(self.mixer_act) is nn.ReLU:
            h = self._normed(self.norm1, self.in_proj, x, relu=True)
        else:
            h = self.mixer_act(self._normed(self.norm1, self.in_proj, x))
        # inference, rank 1: the mixer hands back factors (u, w) and the matricizer folds u wᵀ
        # back, so the (B', M, N) product is never formed; lazy windows reach the mixer a
        # cache-sized chunk at a time, so no window tensor exists either
        fold = self._inference_fold()
        lazy = self.matricize.lazy if fold else None
        if lazy is not None:
            matrices = lazy(h)
            ctx = matrices.ctx
        else:
            matrices, ctx = self.matricize(h)
        mask = ctx.mask if isinstance(ctx, MatricizeContext) else None
        factors = self.mixer.rank1_factors(matrices, mask) if fold else None
        if factors is not None:
            return self.matricize.inverse_rank1(*factors, ctx)
        if lazy is not None:  # the mixer declined: the usual call
            matrices, ctx = self.matricize(h)
        matrices = self.mixer(matrices) if mask is None else self.mixer(matrices, mask=mask)
        return self.matricize.inverse(matrices, ctx)

    def _inference_fold(self) -> bool:
        """Whether a rank-1 mixer may hand back factors for the matricizer to fold: no autograd,
        no compile, and no hooks on the two modules (their calls are skipped)."""
        parts = [m for m in (self.matricize, self.mixer) if isinstance(m, nn.Module)]
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in parts)
        return (
            not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not hooked
            and isinstance(self.matricize, Matricize)
            and isinstance(self.mixer, Factorization)
            and type(self.mixer).rank1_factors is not Factorization.rank1_factors  # has the capability
        )

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer branch (without the residual): ``(B, C, *S) -> (B, C, *S)``."""
        return self.drop(self.out_proj(self._mix_inner(x)))

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether the MLP branch can run as one kernel of :func:`lowrank.kernels.fused_mlp` (the
        chunked CPU node, or the Triton kernels): the kernel layer says whether one applies."""
        mlp, norm = self.mlp, self.norm2
        return (
            isinstance(norm, ChannelLayerNorm)
            and norm.weight is not None
            and type(mlp.act) is nn.GELU
            and _inactive(mlp.drop1)
            and _inactive(mlp.drop2)
            and mlp_backend(x, mlp.fc1.weight, mlp.act.approximate) != "reference"
        )

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(norm2(x))``: one kernel where the kernel layer has one (the chunked CPU node,
        the Triton kernels), else the residual added in the last projection's output buffer."""
        mlp = self.mlp
        if self._fusable(x):
            norm, fc2 = self.norm2, mlp.fc2
            w1, b1 = _fold_affine(norm, mlp.fc1)
            dt = x.dtype
            return fused_mlp(
                x, w1.to(dt), b1.to(dt), fc2.weight.to(dt), fc2.bias.to(dt), norm.eps, mlp.act.approximate
            )
        h = mlp.drop1(mlp.act(self._normed(self.norm2, mlp.fc1, x)))
        if _inactive(mlp.drop2):
            return mlp.fc2(h, residual=x)
        return x + mlp.drop2(mlp.fc2(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x: (B, C, *S)``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"factorizer expects (B, {self.channels}, *S) with {self.spatial_dims} spatial axes, "
                f"got {tuple(x.shape)}"
            )
        if not self.skip_mixer:
            if _inactive(self.drop):
                x = self.out_proj(self._mix_inner(x), residual=x)
            else:
                x = x + self.mix(x)
        if self.mlp is not None:
            x = self._mlp_branch(x)
        return x

    def extra_repr(self) -> str:
        return "skip_mixer=True" if self.skip_mixer else ""
