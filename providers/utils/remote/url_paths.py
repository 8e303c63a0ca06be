"""Putting a vendor's ids into the paths of its routes."""

from __future__ import annotations

import urllib.parse


def segment(value: str) -> str:
    """``value`` as one URL path segment, every reserved character escaped.

    Ids come from vendors and clients: escaped, one holding ``/``, ``?`` or ``#`` cannot reach another route.
    """
    return urllib.parse.quote(value, safe="")
