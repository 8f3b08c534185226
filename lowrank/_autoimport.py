"""Import every module of a subpackage, so that its parts register themselves, and export them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

__all__ = ["import_submodules"]


def import_submodules(package_name: str, package_path: list[str]) -> list[str]:
    """Import all modules under a package (not starting with ``_``) and export their classes.

    Every public class a module lists in its ``__all__`` (and every registered part class it
    defines) becomes an attribute of the package, as in MONAI and timm:
    ``from lowrank.nets import SwinFactorizer``.

    Args:
        package_name: the package's ``__name__``.
        package_path: the package's ``__path__``.

    Returns:
        The package's ``__all__``: the exported class names, then the module names, each sorted.

    Raises:
        ImportError: two modules of the package export different classes under one name.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(package_path) if not m.name.startswith("_"))
    package = sys.modules[package_name]
    exported: dict[str, type] = {}
    for name in names:
        module = importlib.import_module(f"{package_name}.{name}")
        candidates = {n: getattr(module, n, None) for n in getattr(module, "__all__", ())}
        candidates.update(
            (n, obj)
            for n, obj in vars(module).items()
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and "_lowrank_part" in vars(obj)
        )
        for attr, obj in candidates.items():
            if not inspect.isclass(obj) or attr.startswith("_"):
                continue
            if exported.setdefault(attr, obj) is not obj:
                raise ImportError(
                    f"{package_name} exports two classes named {attr!r} "
                    f"({exported[attr].__module__} and {obj.__module__}): rename one"
                )
    for attr, obj in exported.items():
        setattr(package, attr, obj)
    return sorted(exported) + names
