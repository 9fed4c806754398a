"""The dashboard page served at ``GET {admin_path}/``."""

from __future__ import annotations

__all__ = ["page"]


def page(admin_path: str) -> bytes:
    """The dashboard's HTML for an admin API answering at `admin_path`."""
    return b"<!doctype html><title>hindsight-web</title>"
