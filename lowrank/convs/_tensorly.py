"""tensorly decompositions on numpy arrays, without touching the user's tensorly backend."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["numpy_backend", "cp", "exact_cp", "tucker", "tensor_train", "balance"]


@contextlib.contextmanager
def numpy_backend() -> Iterator[None]:
    """Run tensorly on numpy inside the block; the caller's backend is restored afterwards.

    ``local_threadsafe=True`` keeps other threads on their backend while the block runs.
    """
    import tensorly

    before = tensorly.get_backend()
    with tensorly.backend_context("numpy", local_threadsafe=True):
        yield
    if tensorly.get_backend() != before:  # pragma: no cover - tensorly guarantees this
        tensorly.set_backend(before)


def balance(factors: Sequence[np.ndarray], weights: np.ndarray) -> list[np.ndarray]:
    """Absorb CP ``weights (R,)`` into ``factors`` (each ``(dim, R)``), spread evenly over them."""
    scale = np.abs(weights) ** (1.0 / len(factors))
    out = [f * scale for f in factors]
    out[0] = out[0] * np.sign(weights + (weights == 0))
    return out


def exact_cp(tensor: np.ndarray, rank: int) -> list[np.ndarray]:
    """An exact CP decomposition when ``rank >= numel / max(shape)``: one term per fiber.

    Every fiber along the longest mode becomes a rank-1 term (unit vectors on the other modes);
    the remaining ``rank - #fibers`` terms are zero.
    """
    longest = int(np.argmax(tensor.shape))
    others = [m for m in range(tensor.ndim) if m != longest]
    fibers = int(np.prod([tensor.shape[m] for m in others]))
    factors = [np.zeros((d, rank)) for d in tensor.shape]
    for r, index in enumerate(np.ndindex(*[tensor.shape[m] for m in others])):
        for m, i in zip(others, index):
            factors[m][i, r] = 1.0
        where = list(index)
        where.insert(longest, slice(None))
        factors[longest][:, r] = tensor[tuple(where)]
    weights = np.ones(rank)
    weights[fibers:] = 0.0
    return balance(factors, weights)


def cp(tensor: np.ndarray, rank: int) -> list[np.ndarray]:
    """CP factors ``(dim_i, rank)`` of ``tensor``.

    Exact (:func:`exact_cp`) when ``rank`` reaches the trivial bound ``numel / max(shape)``;
    otherwise ALS from an SVD init with a fixed random state and a tiny ridge term, which keeps
    the normal equations solvable when the rank exceeds some mode's size.
    """
    from tensorly.decomposition import parafac

    if rank * max(tensor.shape) >= tensor.size:
        return exact_cp(tensor, rank)
    ridge = 1e-12 * float(np.sum(tensor**2)) + 1e-30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_eigenvecs larger than ..." for big ranks
        weights, factors = parafac(
            tensor,
            rank,
            init="svd",
            n_iter_max=500,
            tol=1e-12,
            l2_reg=ridge,
            random_state=np.random.RandomState(0),
        )
    return balance(factors, weights)


def _pad(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad ``array`` to ``shape`` (tensorly caps ranks at what the tensor supports)."""
    out = np.zeros(shape, dtype=array.dtype)
    out[tuple(slice(0, s) for s in array.shape)] = array
    return out


def tucker(
    tensor: np.ndarray, ranks: Sequence[int], modes: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Tucker core and factors ``(dim, rank)`` of ``tensor`` over ``modes`` (HOSVD + HOOI)."""
    from tensorly.decomposition import partial_tucker

    capped = [min(r, tensor.shape[m]) for r, m in zip(ranks, modes)]
    (core, factors), _ = partial_tucker(tensor, rank=capped, modes=list(modes), n_iter_max=200, tol=1e-12)
    full = list(tensor.shape)
    for r, m in zip(ranks, modes):
        full[m] = r
    factors = [_pad(f, (tensor.shape[m], r)) for f, m, r in zip(factors, modes, ranks)]
    return _pad(core, full), factors


def tensor_train(tensor: np.ndarray, ranks: Sequence[int]) -> list[np.ndarray]:
    """Tensor-train cores ``(r_{i}, dim_i, r_{i+1})`` of ``tensor`` (TT-SVD), padded to ``ranks``."""
    from tensorly.decomposition import tensor_train as tt

    cores = tt(tensor, rank=[1, *ranks, 1]).factors
    bonds = [1, *ranks, 1]
    return [_pad(c, (bonds[i], tensor.shape[i], bonds[i + 1])) for i, c in enumerate(cores)]
