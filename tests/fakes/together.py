"""A fake Together API (``https://api.together.xyz/v1``) validated against together-openapi.yaml.

Routes the YAML document lacks (``/files/upload``, ``/tci/execute``, ``/fine-tunes/models/*``,
``/fine-tunes/{id}/checkpoints``, ``/evaluation``) are validated against together-endpoints.lap instead:
field names, required fields and basic types. Handlers live in the ``together_*`` modules beside this one;
each exposes ``install(fake, state)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from support import REPO

from .lap import check_request, find_endpoint, load_lap
from .vendor_server import FakeVendor, Recorded

SPECS = REPO.parent / "shared" / "specs"
API_KEY = "together-test-key"

_YAML = yaml.safe_load((SPECS / "together-openapi.yaml").read_text())
_LAP = load_lap(SPECS / "together-endpoints.lap")


def _covered_by_yaml(path: str) -> bool:
    import re

    for template in _YAML["paths"]:
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path):
            # /fine-tunes/{id} would also match /fine-tunes/models; the LAP has the literal route.
            return not (template == "/fine-tunes/{id}" and path.startswith("/fine-tunes/models"))
    return False


def _lap_check(recorded: Recorded) -> list[str] | None:
    """Problems by the LAP for routes the YAML does not cover; None for routes the YAML covers."""
    local = recorded.path.removeprefix("/v1")
    if _covered_by_yaml(local):
        return None
    endpoint = find_endpoint(_LAP, recorded.method, local)
    if endpoint is None:
        return [f"{recorded.method} {local} is not a Together endpoint"]
    problems = []
    if not recorded.headers.get("authorization", "").startswith("Bearer "):
        problems.append("missing 'Authorization: Bearer' (security scheme bearer)")
    if local == "/files/upload":
        # The specs name no form fields; the upload must at least be multipart with a file.
        if not any(isinstance(v, tuple) for v in recorded.form.values()):
            problems.append("expected a multipart/form-data upload with a file")
        return problems
    values: dict[str, Any] = dict(recorded.query)
    if recorded.body:
        body = recorded.json
        if not isinstance(body, dict):
            return problems + ["the JSON body must be an object"]
        values.update(body)
    path_params = {name.strip("{}") for name in endpoint.path.split("/") if name.startswith("{")}
    return problems + check_request(endpoint, path_params, values)


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found", 429: "rate_limit_exceeded"}
    return {"error": {"type": kinds.get(status, "server_error"), "message": message, "param": None, "code": None}}


def make_together_fake() -> FakeVendor:
    from . import together_fine_tunes, together_handlers, together_tools

    fake = FakeVendor(
        "together",
        _YAML,
        base_path="/v1",
        api_key=API_KEY,
        key_of=lambda r: r.headers.get("authorization", "").removeprefix("Bearer ") or None,
        error_body=error_body,
        extra_check=_lap_check,
    )
    for module in (together_handlers, together_fine_tunes, together_tools):
        module.install(fake)
    return fake
