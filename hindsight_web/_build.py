"""Which build of hindsight-web runs: the compiled modules (mypyc) or the pure-Python ones.

A compiled wheel holds each hot module twice, as ``name.py`` and as a compiled
extension beside it; Python imports the extension first. With the environment
variable ``HINDSIGHT_PURE_PYTHON`` set to anything but ``""`` or ``"0"`` when
hindsight_web is first imported, `prefer_source` makes every module of the
package load from its ``.py`` file instead: the same code, interpreted.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

PURE_PYTHON_VARIABLE = "HINDSIGHT_PURE_PYTHON"
_PACKAGE = __name__.rpartition(".")[0]


def pure_python_asked() -> bool:
    """Whether ``HINDSIGHT_PURE_PYTHON`` asks for the pure-Python modules."""
    return os.environ.get(PURE_PYTHON_VARIABLE, "") not in ("", "0")


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the package's modules as the path finder does, then loads a compiled one
    from the ``.py`` file beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PACKAGE + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        origin = spec.origin if spec is not None else None
        if spec is None or origin is None or origin.endswith(".py"):
            return spec
        name = fullname.rpartition(".")[2]
        base = "__init__" if spec.submodule_search_locations is not None else name
        source = os.path.join(os.path.dirname(origin), base + ".py")
        if not os.path.exists(source):
            return spec
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


def prefer_source() -> None:
    """Load the package's modules imported from now on from their ``.py`` files."""
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def is_compiled(module: ModuleType) -> bool:
    """Whether `module` was loaded from a compiled extension."""
    return not (module.__file__ or "").endswith(".py")


def running() -> str:
    """``"compiled"`` when the compiled modules run, else ``"pure"``."""
    return "compiled" if is_compiled(sys.modules[f"{_PACKAGE}.core"]) else "pure"
