"""Handlers of the fake Emissary API, answering in the spec's shapes."""

from __future__ import annotations

from .vendor_server import FakeVendor


def install(fake: FakeVendor) -> None:
    pass
