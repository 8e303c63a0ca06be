"""A fake Emissary API (``https://api.withemissary.com``, paths under ``/v1``) validated against
emissary-openapi.json. Handlers live in ``emissary_handlers``."""

from __future__ import annotations

import json
from typing import Any

from support import REPO

from .vendor_server import FakeVendor

SPECS = REPO / "tests" / "specs"  # copies of the vendors' specs (test_specs_in_step.py)
API_KEY = "emissary-test-key"

_SPEC = json.loads((SPECS / "emissary-openapi.json").read_text())


def error_body(status: int, message: str) -> dict[str, Any]:
    # Emissary's errors are flat: {"status": 400, "error": "Bad request"}; 404s add a code.
    body: dict[str, Any] = {"status": status, "error": message}
    if status == 404:
        body["code"] = "object_not_found"
    return body


def make_emissary_fake() -> FakeVendor:
    from . import emissary_classification, emissary_handlers, emissary_training

    fake = FakeVendor(
        "emissary",
        _SPEC,
        base_path="",
        api_key=API_KEY,
        key_of=lambda r: r.headers.get("x-api-key"),
        error_body=error_body,
    )
    for module in (emissary_handlers, emissary_training, emissary_classification):
        module.install(fake)
    return fake
