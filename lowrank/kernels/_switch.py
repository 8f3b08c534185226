"""The kernel switch: which backend runs the operations of :mod:`lowrank.kernels`.

Backends:

* ``reference``: plain PyTorch with autograd, written like the formulas (the oracle every other
  backend is tested against); runs on every device, under ``torch.compile`` and on ``meta``.
* ``cpu``: the fused CPU nodes (hand-written backward, in-place cache-sized chunks, direct
  oneDNN calls). Only ever runs on CPU tensors in eager mode; elsewhere ``reference`` runs.
* ``triton``: Triton kernels (``torch.library`` custom ops with fake implementations, so they
  also trace on ``meta`` and under ``torch.compile``). Runs on CUDA tensors, on ``meta``, and on
  CPU tensors when ``TRITON_INTERPRET=1`` (the interpreter, for tests); shapes a kernel does
  not cover run ``reference``.
* ``auto`` (default): ``cpu`` for CPU tensors, ``triton`` for CUDA tensors when triton imports,
  else ``reference``.

The setting comes from :func:`use_kernels` (global setter and context manager) or, until that is
called, from the environment variable ``LOWRANK_KERNELS``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

__all__ = ["BACKENDS", "ENV_VAR", "backend_for", "current", "meta_as", "triton_available", "use_kernels"]

BACKENDS = ("auto", "reference", "cpu", "triton")
ENV_VAR = "LOWRANK_KERNELS"


def _check(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return name  # type: ignore[return-value]


_setting: list[str | None] = [None]  # None: read the environment variable


def current() -> str:
    """The active setting (``auto``, ``reference``, ``cpu`` or ``triton``)."""
    if _setting[0] is not None:
        return _setting[0]
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return _check(env, f"the environment variable {ENV_VAR}") if env else "auto"


#: whether the triton package is installed (looked up once, without importing it)
_TRITON = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether the triton package is installed (it is imported at the first kernel call)."""
    return _TRITON


def triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (``TRITON_INTERPRET=1``: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class use_kernels:  # noqa: N801 (used like a function, as timm's ``use_fused_attn``)
    """Choose the kernel backend: globally (a call) or for a ``with`` block (restored on exit).

    Args:
        backend: ``"auto"`` (default: ``cpu`` on CPU tensors, ``triton`` on CUDA tensors when
            triton imports, else ``reference``), ``"reference"``, ``"cpu"`` or ``"triton"``.

    Raises:
        ValueError: an unknown backend name.
        ImportError: ``"triton"`` without an importable triton (``pip install lowrank[triton]``).

    Example:
        >>> import lowrank
        >>> with lowrank.use_kernels("reference"):
        ...     pass  # every kernel runs plain PyTorch autograd here
        >>> _ = lowrank.use_kernels("auto")  # global
    """

    def __init__(self, backend: str = "auto"):
        _check(backend, "use_kernels(backend)")
        if backend == "triton" and not triton_available():
            raise ImportError(
                "use_kernels('triton') needs the triton package: pip install 'lowrank[triton]' "
                "(or use 'auto', which falls back to 'reference')"
            )
        self.backend = backend
        self._previous = _setting[0]
        _setting[0] = backend

    def __enter__(self) -> use_kernels:
        return self

    def __exit__(self, *exc: object) -> None:
        _setting[0] = self._previous

    def __repr__(self) -> str:
        return f"use_kernels({self.backend!r})"


_meta_as: list[str | None] = [None]  # None: meta tensors are meta for ``auto``


class meta_as:  # noqa: N801 (a context manager used like a function)
    """Within the block, ``auto`` chooses for ``meta`` tensors what it would choose for tensors of
    ``device_type`` (``"cuda"``: ``triton`` when triton imports). For counting what a CUDA run
    launches on the meta device (``bench/count_ops.py``); the explicit backends are unchanged.

    Args:
        device_type: ``"cuda"`` or ``"cpu"`` (``cpu`` machinery still never runs on meta tensors:
            the ``cpu`` backend falls back to ``reference`` there).
    """

    def __init__(self, device_type: str = "cuda"):
        if device_type not in ("cuda", "cpu"):
            raise ValueError(f"meta_as(device_type) must be 'cuda' or 'cpu', got {device_type!r}")
        self.device_type = device_type
        self._previous: list[str | None] = []

    def __enter__(self) -> meta_as:
        self._previous.append(_meta_as[0])
        _meta_as[0] = self.device_type
        return self

    def __exit__(self, *exc: object) -> None:
        _meta_as[0] = self._previous.pop()


class pinned:  # noqa: N801
    """The current setting, to re-enter later (e.g. a checkpointed recomputation in backward):
    ``with pinned():`` made at forward time runs its block under the setting active then."""

    def __init__(self) -> None:
        self.setting = current()
        self._previous: list[str | None] = []

    def __enter__(self) -> pinned:
        self._previous.append(_setting[0])
        _setting[0] = self.setting
        return self

    def __exit__(self, *exc: object) -> None:
        _setting[0] = self._previous.pop()


def backend_for(device: torch.device, *, cpu_ok: bool = True, triton_ok: bool = True) -> str:
    """The backend that runs an operation on tensors of ``device``: never ``auto``.

    Args:
        device: the tensors' device.
        cpu_ok: the ``cpu`` implementation applies to this call (besides the device).
        triton_ok: a Triton kernel exists for this call's shapes and options.

    Returns:
        ``"reference"``, ``"cpu"`` or ``"triton"``. ``cpu`` only for CPU tensors outside
        ``torch.compile``; ``triton`` only for CUDA / meta tensors (or CPU tensors under
        ``TRITON_INTERPRET=1``) when triton imports; otherwise ``reference``. Under
        :class:`meta_as`, ``auto`` treats meta tensors as that device's.
    """
    setting = current()
    if setting == "auto":
        kind = _meta_as[0] if device.type == "meta" and _meta_as[0] is not None else device.type
        if kind == "cpu":
            setting = "cpu"
        elif kind == "cuda" and triton_available():
            setting = "triton"
        else:
            return "reference"
    if setting == "cpu":
        ok = cpu_ok and device.type == "cpu" and not torch.compiler.is_compiling()
        return "cpu" if ok else "reference"
    if setting == "triton":
        runs = device.type in ("cuda", "meta") or (device.type == "cpu" and triton_interpreted())
        return "triton" if triton_ok and runs and triton_available() else "reference"
    return "reference"
