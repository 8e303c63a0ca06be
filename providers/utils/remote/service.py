"""An HTTP client for one vendor's API, shared by all of a remote provider's adapters.

It resolves the API key (the request's provider data, then the config, then the environment), applies the
timeout, retries 429/503/504 answers and dropped connections with exponential backoff and full jitter, and
turns every failure into a :class:`~llama_stack.apis.errors.LlamaStackError` that names the provider and
carries the vendor's own message: 503 when the vendor is overloaded or rate-limiting after the retries,
504 when it is too slow, 502 when it fails or answers nonsense, 400 when it refuses what was asked.
Keys travel in headers only and are never logged. Everything the vendor sends passes through the
service's :class:`~.redaction.Redactor` before anything else reads it, so a vendor (or a proxy) echoing
the request's headers cannot put a key into an error message, a log line or an answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import EventSource, SSEError

from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    LlamaStackError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.request_context import provider_data

from .config import RemoteServiceConfig
from .redaction import Redactor, request_credentials, scrub_text

if TYPE_CHECKING:
    from llama_stack.plugins import ProviderContext

log = logging.getLogger(__name__)

# httpx.Request extension: the credential-named fields of the JSON body a request was built with.
_BODY_CREDENTIALS = "llama_stack.body_credentials"

RETRY_STATUSES = frozenset({429, 503, 504})
MAX_BACKOFF = 8.0
# Connection failures after which the request may have reached the vendor: retried only when repeating it
# cannot do anything twice (every inference call; not creating a fine-tuning job).
DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


@dataclass(frozen=True)
class Vendor:
    """How one vendor's API is reached: its name in messages, where its key comes from, how the key is sent."""

    name: str
    env_var: str
    provider_data_key: str
    auth_headers: Callable[[str], dict[str, str]]

    def service(
        self,
        config: RemoteServiceConfig,
        context: ProviderContext,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> RemoteService:
        return RemoteService(
            provider_id=context.provider_id,
            vendor=self.name,
            config=config,
            env_var=self.env_var,
            provider_data_key=self.provider_data_key,
            auth_headers=self.auth_headers,
            transport=transport,
        )


class VendorStatusError(ProviderError):
    """The vendor answered an error status; ``vendor_status`` keeps it for adapters that map it themselves."""

    def __init__(self, message: str, *, vendor_status: int, vendor_message: str, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.vendor_status = vendor_status
        self.vendor_message = vendor_message


def vendor_error_text(body: Any) -> str:
    """The human message in a vendor's error body: ``{"error": {"message"}}``, ``{"error": "..."}``, ..."""
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail")))
        if isinstance(error, dict):
            return str(error.get("message") or error)
        if error is not None:
            return str(error)
    text = body if isinstance(body, str) else json.dumps(body)
    return text[:500]


class RemoteService:
    def __init__(
        self,
        *,
        provider_id: str,
        vendor: str,
        config: RemoteServiceConfig,
        env_var: str,
        provider_data_key: str,
        auth_headers: Callable[[str], dict[str, str]],
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.provider_id = provider_id
        self.vendor = vendor
        self.config = config
        self.env_var = env_var
        self.provider_data_key = provider_data_key
        self._auth_headers = auth_headers
        # Which headers carry the key: their values, as sent, are scrubbed from what comes back.
        self._auth_header_names = tuple(auth_headers("placeholder-key"))
        self.redactor = Redactor(config, env_var=env_var)
        self._http = httpx.AsyncClient(
            base_url=config.url.rstrip("/"), timeout=httpx.Timeout(config.timeout), transport=transport
        )

    @property
    def name(self) -> str:
        return f"provider '{self.provider_id}' ({self.vendor})"

    # ------------------------------------------------------------------------------------------ keys
    def api_key(self) -> tuple[str, bool]:
        """The key for this request, and whether it came with the request (read at the call's start)."""
        from_request = provider_data().get(self.provider_data_key)
        if from_request:
            return str(from_request), True
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value(), False
        from_env = os.environ.get(self.env_var)
        if from_env:
            return from_env, False
        raise AuthenticationError(
            f"{self.name} has no API key: set api_key in its config or ${self.env_var}, or send "
            f'{{"{self.provider_data_key}": "..."}} in the X-LlamaStack-Provider-Data header',
            provider=self.provider_id,
            code="missing_api_key",
        )

    # --------------------------------------------------------------------------------------- requests
    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with retries; a 2xx response (unread when ``stream``), or the mapped error."""
        key, from_request = self.api_key()
        request = self._http.build_request(
            method, path, json=json_body, params=params, files=files, data=data, headers=self._auth_headers(key)
        )
        # Read from the body as it was built, not parsed back from its bytes after every answer.
        request.extensions[_BODY_CREDENTIALS] = (
            list(request_credentials(json_body)) if isinstance(json_body, Mapping) else []
        )
        attempt = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                if isinstance(exc, httpx.ConnectTimeout) and attempt < self.config.max_retries:
                    attempt = await self._backoff(attempt, method, path, "connect timeout")
                    continue
                raise ProviderTimeoutError(
                    f"{self.name} did not answer {method} {path} within {self.config.timeout:g} s",
                    provider=self.provider_id,
                ) from None
            except httpx.ConnectError as exc:
                if attempt < self.config.max_retries:
                    attempt = await self._backoff(attempt, method, path, "connection refused")
                    continue
                raise ServiceUnavailableError(
                    f"{self.name} cannot be reached at {scrub_text(self.config.url)}: {self._scrubbed(exc, request)}",
                    provider=self.provider_id,
                ) from None
            except DROPPED as exc:
                if idempotent and attempt < self.config.max_retries:
                    attempt = await self._backoff(attempt, method, path, "connection dropped")
                    continue
                raise ProviderError(
                    f"{self.name} dropped the connection during {method} {path}: {self._scrubbed(exc, request)}",
                    provider=self.provider_id,
                ) from None
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if response.status_code in RETRY_STATUSES and attempt < self.config.max_retries:
                attempt = await self._backoff(
                    attempt, method, path, f"status {response.status_code}", _retry_after(response)
                )
                continue
            error = self._status_error(response, from_request)
            if response.status_code in RETRY_STATUSES:
                error.retry_after = _retry_after(response)  # the vendor's own hint, passed on to the caller
            raise error

    async def json(self, method: str, path: str, **options: Any) -> Any:
        response = await self.request(method, path, **options)
        return self.decode(response, method, path)

    def decode(self, response: httpx.Response, method: str, path: str) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        sent = self._sent_credentials(response.request)
        try:
            return self.redactor.answer(response.json(), response.text, sent)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProviderError(
                f"{self.name} answered {method} {path} with invalid JSON: "
                f"{self.redactor.error_text(response.text, sent)[:200]!r}",
                provider=self.provider_id,
            ) from None

    async def open_stream(
        self, method: str, path: str, *, json_body: Any, end_marker: str | None = "[DONE]"
    ) -> AsyncGenerator[Any, None]:
        """Start a server-sent-event stream (retrying before its first byte); iterate the decoded events.

        Awaiting this sends the request, so a refused request fails here, as an ordinary error status,
        rather than in the middle of the caller's stream.
        """
        response = await self.request(method, path, json_body=json_body, stream=True)
        return self._events(response, method, path, end_marker)

    async def _events(
        self, response: httpx.Response, method: str, path: str, end_marker: str | None
    ) -> AsyncGenerator[Any, None]:
        received = 0
        # The stream is read after the request's handler has returned (its provider data gone): the
        # credentials to scrub are the ones this request was sent with.
        sent = self._sent_credentials(response.request)
        try:
            async for event in EventSource(response).aiter_sse():
                if event.event == "error":
                    message = vendor_error_text(self.redactor.error_body(_loads(event.data), sent))
                    raise ProviderError(
                        f"{self.name} reported an error mid-stream: {message}", provider=self.provider_id
                    )
                if end_marker is not None and event.data.strip() == end_marker:
                    return
                if not event.data.strip():
                    continue
                try:
                    payload = self.redactor.answer(json.loads(event.data), event.data, sent)
                except json.JSONDecodeError:
                    raise ProviderError(
                        f"{self.name} sent an invalid stream event: {self.redactor.error_text(event.data, sent)[:200]!r}",
                        provider=self.provider_id,
                    ) from None
                received += 1
                yield payload
            if end_marker is not None:
                raise ProviderError(
                    f"{self.name} ended the stream of {method} {path} without {end_marker} after {received} "
                    "events; the answer is incomplete",
                    provider=self.provider_id,
                )
        except (httpx.TransportError, SSEError) as exc:
            raise ProviderError(
                f"{self.name} broke off the stream of {method} {path} after {received} events: "
                f"{self.redactor.error_text(str(exc), sent)}",
                provider=self.provider_id,
            ) from None
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------------------------------- helpers
    async def _backoff(self, attempt: int, method: str, path: str, why: str, retry_after: float | None = None) -> int:
        delay = min(MAX_BACKOFF, self.config.retry_backoff * 2**attempt)
        delay = min(MAX_BACKOFF, retry_after) if retry_after is not None else random.uniform(0, delay)
        log.warning(
            "%s: %s %s failed (%s); retry %d of %d in %.2f s",
            self.name,
            method,
            path,
            why,
            attempt + 1,
            self.config.max_retries,
            delay,
        )
        await asyncio.sleep(delay)  # backoff between attempts, not a race cover
        return attempt + 1

    def _sent_credentials(self, request: httpx.Request) -> list[str]:
        """The credentials ``request`` carried: its key headers' values, the key in each (after a scheme), and
        credential-named fields of its JSON body (a client's Weights & Biases key in a training job)."""
        values = [request.headers[name] for name in self._auth_header_names if request.headers.get(name)]
        return values + [value.split()[-1] for value in values] + request.extensions.get(_BODY_CREDENTIALS, [])

    def _scrubbed(self, exc: Exception, request: httpx.Request) -> str:
        return self.redactor.error_text(str(exc), self._sent_credentials(request))

    def _status_error(self, response: httpx.Response, from_request: bool) -> LlamaStackError:
        status = response.status_code
        body = self.redactor.error_body(_loads(response.text), self._sent_credentials(response.request))
        message = vendor_error_text(body)
        where = f"{response.request.method} {response.request.url.path}"
        common: dict[str, Any] = {"provider": self.provider_id}
        if status == 429:
            return ServiceUnavailableError(
                f"{self.name} is rate-limiting requests (429 on {where}, after {self.config.max_retries} retries): "
                f"{message}",
                code="rate_limited",
                **common,
            )
        if status == 503:
            return ServiceUnavailableError(
                f"{self.name} is unavailable (503 on {where}, after {self.config.max_retries} retries): {message}",
                **common,
            )
        if status == 504:
            return ProviderTimeoutError(f"{self.name} timed out (504 on {where}): {message}", **common)
        if status in (401, 403):
            if from_request:
                return AuthenticationError(
                    f"{self.name} rejected the API key sent with the request ({status}): {message}", **common
                )
            return VendorStatusError(
                f"{self.name} rejected its configured API key ({status} on {where}); check api_key or "
                f"${self.env_var}: {message}",
                vendor_status=status,
                vendor_message=message,
                code="provider_auth_failed",
                **common,
            )
        if status in (400, 422):
            return BadRequestError(f"{self.name} refused the request ({status} on {where}): {message}", **common)
        return VendorStatusError(
            f"{self.name} failed ({status} on {where}): {message}",
            vendor_status=status,
            vendor_message=message,
            **common,
        )


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
