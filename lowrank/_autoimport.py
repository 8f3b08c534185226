"""Import every module of a subpackage, so that its parts register themselves."""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["import_submodules"]


def import_submodules(package_name: str, package_path: list[str]) -> list[str]:
    """Import all modules under a package (not starting with ``_``).

    Args:
        package_name: the package's ``__name__``.
        package_path: the package's ``__path__``.

    Returns:
        The imported module names, sorted.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(package_path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package_name}.{name}")
    return names
