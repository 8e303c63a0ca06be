"""Handlers of the fake vendor API for this area (filled in with the adapters that use them)."""

from __future__ import annotations

from .vendor_server import FakeVendor


def install(fake: FakeVendor) -> None:
    pass
