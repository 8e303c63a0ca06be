"""A fake Together API (``https://api.together.xyz/v1``) validated against together-openapi.yaml.

Routes the YAML document lacks (``/files/upload``, ``/tci/execute``, ``/fine-tunes/models/*``,
``/fine-tunes/{id}/checkpoints``, ``/evaluation``) are validated against together-endpoints.lap instead:
field names, required fields and basic types. ``POST /fine-tunes``, which the YAML declares with fewer
fields than the newer LAP, also takes the LAP's fields (typed as the LAP types them). Handlers live in the
``together_*`` modules beside this one; each exposes ``install(fake, state)``.
"""

from __future__ import annotations

from typing import Any

import yaml
from support import REPO

from .lap import check_request, find_endpoint, load_lap
from .vendor_server import FakeVendor, Recorded

SPECS = REPO / "tests" / "specs"  # copies of the vendors' specs (test_specs_in_step.py)
API_KEY = "together-test-key"

_YAML = yaml.safe_load((SPECS / "together-openapi.yaml").read_text())
_LAP = load_lap(SPECS / "together-endpoints.lap")


def _covered_by_yaml(method: str, path: str) -> bool:
    import re

    for template, item in _YAML["paths"].items():
        if re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", template), path) and method.lower() in item:
            if "{" not in template:
                return True
            # /fine-tunes/{id} would also match /fine-tunes/models/limits, /files/{id} /files/upload:
            # where the LAP has the literal route, that is the operation meant.
            literal = find_endpoint(_LAP, method, path)
            return literal is None or "{" in literal.path
    return False


def _lap_check(recorded: Recorded) -> list[str] | None:
    """Problems by the LAP for routes the YAML does not cover; None for routes the YAML covers."""
    local = recorded.path.removeprefix("/v1")
    if _covered_by_yaml(recorded.method, local):
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
            return [*problems, "the JSON body must be an object"]
        values.update(body)
    path_params = {name.strip("{}") for name in endpoint.path.split("/") if name.startswith("{")}
    return problems + check_request(endpoint, path_params, values)


# Operations the YAML declares with an older, smaller request body than the LAP: the fake accepts the LAP's
# newer fields too (typed as the LAP types them), while the YAML's own fields keep their schemas.
_NEWER_IN_LAP = (("POST", "/fine-tunes"),)
_LAP_JSON_TYPES = {"str": "string", "int": "integer", "num": "number", "bool": "boolean", "map": "object"}


def _lap_field_schema(type_text: str) -> dict[str, Any]:
    import re

    text = type_text.split("=")[0].strip().rstrip("?")
    if text.startswith("["):
        return {"type": "array"}
    base = re.match(r"[a-z]+", text)
    kind = _LAP_JSON_TYPES.get(base.group(0) if base else "any")
    return {"type": kind} if kind else {}


def _with_newer_lap_fields(spec: dict[str, Any]) -> dict[str, Any]:
    import copy

    spec = copy.deepcopy(spec)
    for method, path in _NEWER_IN_LAP:
        endpoint = find_endpoint(_LAP, method, path)
        schema = spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
        for name, declared in endpoint.fields.items() if endpoint else ():
            schema["properties"].setdefault(name, _lap_field_schema(declared.type))
    return spec


def error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found", 429: "rate_limit_exceeded"}
    return {"error": {"type": kinds.get(status, "server_error"), "message": message, "param": None, "code": None}}


def make_together_fake() -> FakeVendor:
    from . import together_fine_tunes, together_handlers, together_tools

    fake = FakeVendor(
        "together",
        _with_newer_lap_fields(_YAML),
        base_path="/v1",
        api_key=API_KEY,
        key_of=lambda r: r.headers.get("authorization", "").removeprefix("Bearer ") or None,
        error_body=error_body,
        extra_check=_lap_check,
    )
    for module in (together_handlers, together_fine_tunes, together_tools):
        module.install(fake)
    return fake
