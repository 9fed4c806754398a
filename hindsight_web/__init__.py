"""hindsight-web: keep every request's detailed logs in memory, write out only the ones that
went wrong (slow, failing, raised, or picked by a runtime rule)."""

from ._version import __version__
from .asgi import HindsightMiddleware
from .binding import bind, set_user
from .core import Hindsight
from .redact import hash_session
from .wsgi import HindsightWSGIMiddleware

__all__ = [
    "Hindsight",
    "HindsightMiddleware",
    "HindsightWSGIMiddleware",
    "__version__",
    "bind",
    "hash_session",
    "set_user",
]
