"""hindsight-web: keep every request's detailed logs in memory, write out only the ones that
went wrong (slow, failing, raised, or picked by a runtime rule)."""

from . import _build
from ._version import __version__

if _build.pure_python_asked():
    _build.prefer_source()

from . import core as _core
from .asgi import HindsightMiddleware
from .binding import bind, set_user
from .core import Hindsight
from .redact import hash_session
from .wsgi import HindsightWSGIMiddleware

#: True when the compiled modules (mypyc) run, False for the pure-Python ones (the sdist,
#: the ``py3-none-any`` wheel, or ``HINDSIGHT_PURE_PYTHON=1``).
__compiled__: bool = _build.is_compiled(_core)

__all__ = [
    "Hindsight",
    "HindsightMiddleware",
    "HindsightWSGIMiddleware",
    "__compiled__",
    "__version__",
    "bind",
    "hash_session",
    "set_user",
]
