"""Inference-time controls and interpretability for trained nets (Factorizer paper §4.5, §4.4).

- :func:`set_iters` changes the number of iterations of every factorization layer (a speed knob:
  the paper finds 2–4 iterations at inference keep the Dice score of 5 in training);
  :func:`iters_override` does it for a ``with`` block and restores the old values.
- :func:`skip_mixers` short-circuits the factorization mixers of chosen stages (the paper's
  "NMF layer" ablation; the decoder's mixers can go at little cost); ``skip_mixers(net, [])``
  restores them.
- :func:`component_maps` returns the NMF component maps (the spatial factor ``V`` of every
  matrix, put back in space by the matricizer) of the factorizer blocks, recorded with forward
  hooks during one forward pass — no change to the model's code or outputs.

Stages are numbered in network order (:attr:`UNetSkeleton.stages`): encoder levels ``0…L-1``
(``L-1`` is the bottleneck), then decoder levels ``L-2…0``; for the paper's 5-level nets these
are the paper's layers 1–9 minus one. Names are accepted too: ``"encoder0"``, ``"bottleneck"``,
``"decoder0"`` (the last, highest-resolution decoder stage).

Example:
    >>> import torch
    >>> from lowrank import build_net
    >>> from lowrank.controls import component_maps, set_iters, skip_mixers
    >>> net = build_net("swin_factorizer(channels=[8, 16], head_dim=4, patch=4, pos_embed_size=none)",
    ...                 1, 2, spatial_dims=2).eval()
    >>> x = torch.randn(1, 1, 16, 16)
    >>> len(set_iters(net, 2))      # every factorization layer now runs 2 iterations in eval
    3
    >>> skip_mixers(net, ["decoder0"])
    ['stages.2.blocks.0']
    >>> maps = component_maps(net, x)
    >>> maps["stages.0.blocks.0"].shape  # (B, heads * rank, *S): 8 channels / head_dim 4 = 2 heads
    torch.Size([1, 2, 16, 16])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

__all__ = [
    "factorization_layers",
    "mixer_blocks",
    "set_iters",
    "iters_override",
    "stage_names",
    "skip_mixers",
    "component_maps",
    "factorizer_blocks",
]


def _kind(module: nn.Module) -> str | None:
    info = getattr(type(module), "_lowrank_part", None)
    return getattr(info, "kind", None)


def factorization_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The factorization layers (registered ``solver`` parts) of ``model``, by qualified name."""
    return {name: m for name, m in model.named_modules() if _kind(m) == "solver"}


def mixer_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The blocks of ``model`` whose mixer can be skipped (those with a ``skip_mixer`` flag)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "skip_mixer")}


def set_iters(
    model: nn.Module, iters: int, *, which: Literal["eval", "train", "both"] = "eval"
) -> dict[str, tuple[int, int]]:
    """Set the number of iterations of every factorization layer of ``model``.

    Args:
        model: any module (a net, a block, a solver).
        iters: the new number of iterations (>= 1).
        which: ``"eval"`` sets ``eval_iters`` (used in eval mode; the inference knob),
            ``"train"`` sets ``iters`` (training mode), ``"both"`` sets both.

    Returns:
        The previous ``(iters, eval_iters)`` of each layer, by name (pass it to
        :func:`iters_override`'s restore or set them back yourself).

    Raises:
        ValueError: ``iters < 1``, a bad ``which``, or a model without factorization layers.
    """
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    if which not in ("eval", "train", "both"):
        raise ValueError(f"which must be 'eval', 'train' or 'both', got {which!r}")
    layers = factorization_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no factorization layers (registered solvers)")
    previous = {}
    for name, layer in layers.items():
        previous[name] = (layer.iters, getattr(layer, "eval_iters", layer.iters))
        if which in ("train", "both"):
            layer.iters = iters
        if which in ("eval", "both") and hasattr(layer, "eval_iters"):
            layer.eval_iters = iters
        elif which == "eval":
            layer.iters = iters
    return previous


@contextlib.contextmanager
def iters_override(
    model: nn.Module, iters: int, *, which: Literal["eval", "train", "both"] = "eval"
) -> Iterator[nn.Module]:
    """``with iters_override(net, 2): ...`` runs with :func:`set_iters` and restores after."""
    previous = set_iters(model, iters, which=which)
    layers = factorization_layers(model)
    try:
        yield model
    finally:
        for name, (train_iters, eval_iters) in previous.items():
            layers[name].iters = train_iters
            if hasattr(layers[name], "eval_iters"):
                layers[name].eval_iters = eval_iters


def stage_names(model: nn.Module) -> list[str]:
    """Names of the stages of a U-Net skeleton, in network order (see the module docstring).

    Raises:
        ValueError: ``model`` has no ``stages`` (it is not built on the U-Net skeleton).
    """
    stages = getattr(model, "stages", None)
    levels = getattr(model, "levels", None)
    if not isinstance(stages, nn.ModuleList) or levels is None:
        raise ValueError(f"{type(model).__name__} is not a U-Net skeleton net (no .stages)")
    names = [f"encoder{level}" for level in range(levels - 1)] + ["bottleneck"]
    return names + [f"decoder{level}" for level in range(levels - 2, -1, -1)]


def _stage_index(model: nn.Module, stage: int | str) -> int:
    names = stage_names(model)
    if isinstance(stage, str):
        if stage not in names:
            raise ValueError(f"unknown stage {stage!r}; stages are {names} (or indices 0..{len(names) - 1})")
        return names.index(stage)
    if not isinstance(stage, int) or isinstance(stage, bool) or not -len(names) <= stage < len(names):
        raise ValueError(f"stage index {stage!r} out of range for {len(names)} stages {names}")
    return stage % len(names)


def skip_mixers(model: nn.Module, stages: Iterable[int | str] | None) -> list[str]:
    """Short-circuit the factorization mixers of the chosen stages (and re-enable the others).

    The blocks keep their MLP branches; only the mixer branch (norm → projection → factorize →
    projection) is skipped, which also skips its cost.

    Args:
        model: a net built on the U-Net skeleton.
        stages: stage indices (network order) or names; ``None`` or ``[]`` re-enables every mixer.

    Returns:
        The qualified names of the blocks whose mixer is now skipped.

    Raises:
        ValueError: an unknown stage, or a chosen stage without a skippable mixer.
    """
    chosen = sorted({_stage_index(model, s) for s in (stages or [])})
    skipped = []
    for index, stage in enumerate(model.stages):
        blocks = {name: m for name, m in stage.named_modules() if hasattr(m, "skip_mixer")}
        if index in chosen and not blocks:
            raise ValueError(
                f"stage {stage_names(model)[index]!r} has no block with a mixer to skip "
                f"(blocks: {[type(b).__name__ for b in getattr(stage, 'blocks', [])]})"
            )
        for name, block in blocks.items():
            block.skip_mixer = index in chosen
            if block.skip_mixer:
                skipped.append(f"stages.{index}.{name}")
    return skipped


def factorizer_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """``{qualified name: block}`` of the blocks with components (``matricize`` and ``mixer``)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(getattr(m, "matricize", None), nn.Module)
        and isinstance(getattr(m, "mixer", None), nn.Module)
    }


def _component_blocks(model: nn.Module, blocks: Sequence[str] | None) -> dict[str, nn.Module]:
    found = factorizer_blocks(model)
    if blocks is None:
        return found
    missing = [b for b in blocks if b not in found]
    if missing:
        raise ValueError(f"no factorizer block named {missing}; blocks with components: {sorted(found)}")
    return {b: found[b] for b in blocks}


@torch.no_grad()
def component_maps(
    model: nn.Module, x: torch.Tensor, *, blocks: Sequence[str] | None = None
) -> dict[str, torch.Tensor]:
    """Record the NMF component maps of factorizer blocks during one forward pass of ``x``.

    Forward hooks capture each block's matricizer context and its mixer's factors (the mixer's
    ``store_factors`` is switched on for the pass and restored after); the spatial factor ``V``
    of every matrix is then put back in space by the matricizer's ``component_map``. The model's
    mode and outputs are unchanged; gradients are off.

    Args:
        model: a net or block containing factorizer blocks (modules with ``matricize`` and
            ``mixer`` submodules).
        x: the input ``(B, C_in, *S)``.
        blocks: qualified names of the blocks to record (default: all), e.g.
            ``["stages.0.blocks.0", "stages.8.blocks.0"]`` for the first and last blocks.

    Returns:
        ``{block name: maps (B, heads * R, *S_block)}`` where ``S_block`` is the block's
        resolution and channel ``h * R + r`` is component ``r`` of head ``h``. Blocks whose
        mixer is skipped are absent.

    Raises:
        ValueError: unknown block names, or a mixer that does not store its factors.
    """
    chosen = _component_blocks(model, blocks)
    records: dict[str, dict] = {name: {} for name in chosen}
    handles = []
    saved = {}

    def save_ctx(name):
        def hook(_module, _inputs, output):
            records[name]["ctx"] = output[1]

        return hook

    def save_factors(name):
        def hook(module, _inputs, _output):
            factors = getattr(module, "factors", None)
            if not isinstance(factors, (tuple, list)):
                raise ValueError(
                    f"the mixer of {name!r} ({type(module).__name__}) does not store its factors; "
                    "component maps need a factorization layer with store_factors"
                )
            records[name]["factors"] = factors

        return hook

    try:
        for name, block in chosen.items():
            saved[name] = getattr(block.mixer, "store_factors", None)
            block.mixer.store_factors = True
            handles.append(block.matricize.register_forward_hook(save_ctx(name)))
            handles.append(block.mixer.register_forward_hook(save_factors(name)))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for name, block in chosen.items():
            block.mixer.store_factors = saved[name] if saved[name] is not None else False
    maps = {}
    for name, record in records.items():
        if "ctx" not in record or "factors" not in record:
            continue  # skipped mixer
        maps[name] = chosen[name].matricize.component_map(record["factors"], record["ctx"])
    for name, block in chosen.items():
        if not saved[name] and hasattr(block.mixer, "factors"):
            block.mixer.factors = None  # do not keep the tensors alive
    return maps
