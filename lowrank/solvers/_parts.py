"""The bases of the ``init`` and ``update`` parts (re-exported by :mod:`lowrank.solvers.base`)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Init", "Update"]


class Init(nn.Module):
    """Base of the ``init`` parts: ``forward(x: (*batch, M, N), rank: int) -> U0 (*batch, M, rank)``.

    ``x`` is the scaled (max |x| = 1), masked matrix in the compute dtype; the result must be in
    ``x``'s dtype and device. Set ``receives_gradient = True`` if U0 carries parameters, and
    ``reads_values = True`` if U0 depends on the values of x, not only on its shape (a family
    that keeps X unscaled then passes a scaled copy; others get X as it is, with no copy).
    Set ``per_matrix = False`` if a matrix's U0 depends on the rest of the batch or on the
    number of calls (a fresh draw per call), so that the batch cannot be initialized in pieces.
    """

    receives_gradient: bool = False
    reads_values: bool = False
    per_matrix: bool = True

    def forward(self, x: Tensor, rank: int) -> Tensor:  # pragma: no cover - abstract
        """Return the initial left factor ``U0: (*batch, M, rank)``."""
        raise NotImplementedError

    def set_rows(self, rows: int | None) -> None:
        """Called when the matrices' row count ``M`` is known at build time (by the block that
        builds the solver): size any state that depends on it now. No-op by default."""

    def observe(self, u: Tensor) -> None:
        """Called in training with the final left factor ``U: (*batch, M, R)`` (detached)."""


class Update(nn.Module):
    """Base of the ``update`` parts: one update of the left factor W of ``X ≈ W Hᵀ``.

    ``forward(x: (*batch, P, Q), w: (*batch, P, R), h: (*batch, Q, R), eps: float,
    scale: (*batch, 1, 1) | None) -> w_new``. The right factor is updated by the same rule on
    the transpose: ``update(x.mT, h, w)``. ``scale`` (NMF passes ``1 / max |X|``) means "read X
    as ``scale · X``": apply it to the small products ``X H`` (P×R), never to X itself, so no
    scaled copy of X exists for autograd to keep.

    Attributes:
        start: the value V is filled with before its first update (from U0).
    """

    start: float = 1.0

    def forward(
        self, x: Tensor, w: Tensor, h: Tensor, eps: float, scale: Tensor | None = None
    ) -> Tensor:  # pragma: no cover
        """Return the updated left factor ``(*batch, P, R)``."""
        raise NotImplementedError
