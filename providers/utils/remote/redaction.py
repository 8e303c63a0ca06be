"""Keeping credentials out of what a vendor sends back: relayed error messages, logs, answers.

A vendor, or a proxy in front of it, may echo the request's headers in an error body ("invalid token in
``Authorization: Bearer sk-...``", a debug dump of the request), and those bodies become the messages of
the errors clients get and the server logs. Every byte a vendor sends reaches the adapters through
:class:`~llama_stack.providers.utils.remote.service.RemoteService`, which passes it through a
:class:`Redactor` first, so a route added later cannot forget it:

- error bodies, error events and the excerpts quoted in messages (:meth:`Redactor.error_text`,
  :meth:`Redactor.error_body`, :func:`excerpt`) lose every known credential and anything that looks like
  one: ``Bearer`` and ``Basic`` tokens, ``Authorization``/``X-API-Key``/``api_key``/``password``/``cookie``
  values in header lines, JSON fields, query strings, and passwords in URLs;
- answers (:meth:`Redactor.answer`) lose only the known credentials, since a model's text may rightly
  speak of ``Bearer`` tokens.

The known credentials are every secret in the provider's config (its ``SecretStr`` fields, a password in
its URL), the key in its environment variable, and the request's own: the key it was sent with and every
credential-named value of the request's provider data. Each is matched as written, URL-encoded,
JSON-escaped and base64-encoded (at any offset, so ``Basic base64(user:key)`` is caught too).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from pydantic import BaseModel, SecretStr

from llama_stack.request_context import provider_data

REDACTED = "[redacted]"

# Shorter values are not matched by value: "[redacted]" in place of every "abc" would wreck messages, and a
# credential that short guards nothing. The patterns below still catch them where they are labelled.
MIN_SECRET_LENGTH = 4
# A base64 run this short could occur by chance in a long base64 body (an image).
_MIN_BASE64_CORE = 8

_CREDENTIAL_NAME = (
    r"(?:proxy-)?authorization|x-api-key|x-goog-api-key|api[-_]?key|apikey|x-auth-token"
    r"|(?:access|auth|refresh|id|session|api|bearer)[-_]?token|client[-_]?secret|secret[-_]?key"
    r"|password|passwd|set-cookie|cookie|secret"
)
# Field names whose values are credentials, in vendors' error bodies and in a request's provider data
# (``together_api_key``); ``max_tokens`` or ``eos_token`` are not among them.
_CREDENTIAL_KEY = re.compile(
    rf"^(?:{_CREDENTIAL_NAME}|token)$|api[-_]?key|secret|passw(?:or)?d|(?:access|auth|refresh|session|api|bearer)[-_]?token$",
    re.IGNORECASE,
)

_TEXT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "authorization": "Bearer x"  /  'x-api-key': 'k'  /  "wandb_api_key": "k"  /  \"api_key\": \"k\" (JSON
    # inside a string)
    (
        re.compile(
            rf"(?P<key>(?P<q>\\?[\"'])[\w-]*?(?:{_CREDENTIAL_NAME})(?P=q)\s*[:=]\s*)(?P<vq>\\?[\"'])(?P<value>.*?)(?P=vq)",
            re.IGNORECASE,
        ),
        rf"\g<key>\g<vq>{REDACTED}\g<vq>",
    ),
    # A header line, "Authorization: Bearer x": the rest of the line is the value.
    (
        re.compile(
            rf"(?P<key>^[ \t]*(?:{_CREDENTIAL_NAME})[ \t]*:[ \t]*)(?P<value>\S.*)$", re.IGNORECASE | re.MULTILINE
        ),
        rf"\g<key>{REDACTED}",
    ),
    # Inline: "api_key=x&...", "authorization: Bearer x, host: ...", "password: x".
    (
        re.compile(
            rf"(?P<key>(?<![\w-])(?:{_CREDENTIAL_NAME})\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?)"
            r"(?P<value>(?!\[redacted\])[^\s,;&\"'<>{}\[\]]+)",
            re.IGNORECASE,
        ),
        rf"\g<key>{REDACTED}",
    ),
    # A bearer token anywhere.
    (re.compile(r"(?P<key>\bbearer\s+)(?!\[redacted\])[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE), rf"\g<key>{REDACTED}"),
    # Basic credentials: base64, so letters with a digit, a symbol or a lower-upper change ("Basic
    # authentication failed" stays as it is).
    (
        re.compile(
            r"(?P<key>\bbasic\s+)(?=[A-Za-z0-9+/]*(?:[0-9+/=]|(?-i:[a-z][A-Z])))[A-Za-z0-9+/]{4,}=*", re.IGNORECASE
        ),
        rf"\g<key>{REDACTED}",
    ),
    # The password in a URL: scheme://user:password@host
    (re.compile(r"(?P<key>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)", re.IGNORECASE), rf"\g<key>{REDACTED}"),
)
# Neighbouring matches (a base64 core inside a Basic token) read as one.
_REPEATED = re.compile(r"(?:\[redacted\]){2,}")


class Redactor:
    """Scrubs one provider's credentials (and whatever looks like a credential) out of vendor text."""

    def __init__(self, config: BaseModel | None = None, *, env_var: str | None = None):
        self._configured = tuple(sorted(set(config_secrets(config)))) if config is not None else ()
        self._env_var = env_var

    def secrets(self, extra: Iterable[str] = ()) -> frozenset[str]:
        """The credentials known now: the config's, the environment variable's, the request's, ``extra``."""
        found = set(self._configured)
        if self._env_var and os.environ.get(self._env_var):
            found.add(os.environ[self._env_var])
        found.update(request_credentials(provider_data()))
        found.update(extra)
        return frozenset(s for s in found if len(s) >= MIN_SECRET_LENGTH)

    def error_text(self, text: str, extra: Iterable[str] = ()) -> str:
        """Vendor text bound for an error message or a log: known credentials and credential-like parts out."""
        secrets = self.secrets(extra)
        return scrub_text(_known_pattern(secrets).sub(REDACTED, text) if secrets else text)

    def error_body(self, body: Any, extra: Iterable[str] = ()) -> Any:
        """A decoded error body (or event) with every string scrubbed and credential-named fields blanked."""
        return _scrub_tree(body, self.secrets(extra))

    def answer(self, payload: Any, raw: str, extra: Iterable[str] = ()) -> Any:
        """A decoded answer without the known credentials; ``raw`` (its text) is searched first, so an
        answer without any (nearly all of them) is returned as it is, unwalked."""
        secrets = self.secrets(extra)
        if not secrets or not any(form in raw for form in _forms_of(secrets)):
            return payload
        return _replace_known(payload, _known_pattern(secrets))


def scrub_text(text: str) -> str:
    """``text`` without anything that looks like a credential (no known values needed)."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return _REPEATED.sub(REDACTED, text)


def excerpt(value: Any, limit: int = 200) -> str:
    """A vendor value quoted in an error message: as JSON (text as is), credential-like parts out, cut to
    ``limit`` characters after scrubbing so that no half of a credential survives the cut. (The known keys
    left the value already, when the RemoteService read it.)"""
    scrubbed = _scrub_tree(value, frozenset())
    text = scrubbed if isinstance(scrubbed, str) else json.dumps(scrubbed, default=str)
    return text[:limit]


def config_secrets(value: Any) -> Iterable[str]:
    """Every ``SecretStr`` value in a config (nested models, lists and maps too), and a password in its url."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            field = getattr(value, name, None)
            if name == "url" and isinstance(field, str):
                yield from _url_password(field)
            yield from config_secrets(field)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from config_secrets(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from config_secrets(item)


def request_credentials(data: Mapping[str, Any]) -> Iterable[str]:
    """The credential-named string values of a request's provider data (``together_api_key``, ...)."""
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from request_credentials(value)
        elif isinstance(value, str) and _CREDENTIAL_KEY.search(str(key)):
            yield value


def _url_password(url: str) -> Iterable[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        yield password


def _scrub_tree(value: Any, secrets: frozenset[str]) -> Any:
    known = _known_pattern(secrets) if secrets else None

    def scrub(item: Any) -> Any:
        if isinstance(item, str):
            return scrub_text(known.sub(REDACTED, item) if known else item)
        if isinstance(item, Mapping):
            return {
                scrub(str(key)): REDACTED
                if isinstance(field, str) and _CREDENTIAL_KEY.search(str(key))
                else scrub(field)
                for key, field in item.items()
            }
        if isinstance(item, (list, tuple)):
            return [scrub(element) for element in item]
        return item

    return scrub(value)


def _replace_known(value: Any, known: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return known.sub(REDACTED, value)
    if isinstance(value, dict):
        return {known.sub(REDACTED, key): _replace_known(item, known) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_known(item, known) for item in value]
    return value


@functools.lru_cache(maxsize=64)
def _forms_of(secrets: frozenset[str]) -> tuple[str, ...]:
    """Every way the secrets may be written, longest first (so a longer form is replaced whole)."""
    forms = {form for secret in secrets for form in _plain_forms(secret) | _base64_cores(secret.encode())}
    return tuple(sorted(forms, key=lambda form: (-len(form), form)))


@functools.lru_cache(maxsize=64)
def _known_pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    plain = {form for secret in secrets for form in _plain_forms(secret)}
    cores = {core for secret in secrets for core in _base64_cores(secret.encode())} - plain
    # A base64 core goes with the whole base64 run around it: its neighbours still carry bits of the secret.
    alternatives = [(len(form), re.escape(form)) for form in plain] + [
        (len(core), f"[A-Za-z0-9+/_-]*{re.escape(core)}[A-Za-z0-9+/_-]*=*") for core in cores
    ]
    return re.compile("|".join(text for _, text in sorted(alternatives, key=lambda item: -item[0])))


def _plain_forms(secret: str) -> set[str]:
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],  # as it sits inside a JSON string
        secret.replace("/", "\\/"),  # encoders that escape slashes (base64 keys have them)
    }
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _base64_cores(raw: bytes) -> set[str]:
    """The part of base64 that encodes ``raw`` alone, for each of the 3 offsets it can start at in a longer
    encoded text (``user:key`` in Basic credentials): the characters mixing its bits with its neighbours'
    are left out."""
    cores = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        start = -(-offset * 4 // 3)  # characters carrying the padding bytes' bits
        end = 4 * ((offset + len(raw)) // 3)  # the last whole group; a partial one mixes with what follows
        core = encoded[start:end]
        if len(core) >= _MIN_BASE64_CORE:
            cores |= {core, core.replace("+", "-").replace("/", "_")}  # standard and URL-safe alphabets
    return cores
