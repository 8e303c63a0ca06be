"""RemoteService, the HTTP client under every remote provider: keys, retries and error mapping.

These drive the client with scripted answers (httpx.MockTransport) to reach each branch exactly; the
vendors' fake servers exercise the same paths over real HTTP in the provider tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest

from llama_stack.apis.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    ProviderTimeoutError,
    ServiceUnavailableError,
)
from llama_stack.providers.utils.remote import RemoteService, RemoteServiceConfig, VendorStatusError
from llama_stack.request_context import using_provider_data

SECRET = "sk-configured-secret"


def service(
    answer: Callable[[httpx.Request], httpx.Response], *, api_key: str | None = SECRET, retries: int = 2
) -> tuple[RemoteService, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    config = RemoteServiceConfig(url="https://vendor.test/v1", api_key=api_key, max_retries=retries, retry_backoff=0.0)
    svc = RemoteService(
        provider_id="vendor-1",
        vendor="Vendor",
        config=config,
        env_var="VENDOR_TEST_KEY",
        provider_data_key="vendor_api_key",
        auth_headers=lambda key: {"Authorization": f"Bearer {key}"},
        transport=httpx.MockTransport(handle),
    )
    return svc, seen


def scripted(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    queue = list(responses)

    def answer(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return answer


def error(status: int, message: str = "vendor says no", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}}, headers=headers)


async def test_a_key_sent_with_the_request_wins_over_the_config_and_the_environment(monkeypatch):
    monkeypatch.setenv("VENDOR_TEST_KEY", "from-env")
    svc, seen = service(scripted(httpx.Response(200, json={})))
    await svc.json("GET", "/models")
    with using_provider_data({"vendor_api_key": "from-request"}):
        await svc.json("GET", "/models")
    unconfigured, seen_env = service(scripted(httpx.Response(200, json={})), api_key=None)
    await unconfigured.json("GET", "/models")
    assert [r.headers["authorization"] for r in seen + seen_env] == [
        f"Bearer {SECRET}",
        "Bearer from-request",
        "Bearer from-env",
    ]


async def test_no_key_anywhere_is_a_401_saying_where_keys_come_from(monkeypatch):
    monkeypatch.delenv("VENDOR_TEST_KEY", raising=False)
    svc, seen = service(scripted(httpx.Response(200, json={})), api_key=None)
    with pytest.raises(AuthenticationError) as missing:
        await svc.json("GET", "/models")
    assert "$VENDOR_TEST_KEY" in missing.value.message and "vendor_api_key" in missing.value.message
    assert missing.value.provider == "vendor-1" and seen == []


@pytest.mark.parametrize("status", [429, 503, 504])
async def test_retryable_statuses_are_retried_then_succeed(status):
    svc, seen = service(scripted(error(status), httpx.Response(200, json={"ok": True})))
    assert await svc.json("POST", "/chat/completions", json_body={}) == {"ok": True}
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("status", "raised", "ours"),
    [(429, ServiceUnavailableError, 503), (503, ServiceUnavailableError, 503), (504, ProviderTimeoutError, 504)],
)
async def test_retryable_statuses_give_up_after_max_retries_naming_the_provider(status, raised, ours):
    svc, seen = service(scripted(error(status, "overloaded right now")), retries=3)
    with pytest.raises(raised) as failure:
        await svc.json("POST", "/chat/completions", json_body={})
    assert len(seen) == 4  # the first attempt and three retries
    assert failure.value.status == ours and failure.value.provider == "vendor-1"
    assert "provider 'vendor-1' (Vendor)" in failure.value.message and "overloaded right now" in failure.value.message


async def test_retry_after_is_honoured(monkeypatch):
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("llama_stack.providers.utils.remote.service.asyncio.sleep", record)
    svc, _ = service(scripted(error(429, headers={"Retry-After": "2"}), httpx.Response(200, json={})))
    await svc.json("GET", "/models")
    assert waits == [2.0]


async def test_backoff_doubles_with_full_jitter_and_a_cap(monkeypatch):
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("llama_stack.providers.utils.remote.service.asyncio.sleep", record)
    monkeypatch.setattr("llama_stack.providers.utils.remote.service.random.uniform", lambda low, high: high)
    svc, _ = service(scripted(error(503)), retries=6)
    svc.config.retry_backoff = 1.0
    with pytest.raises(ServiceUnavailableError):
        await svc.json("GET", "/models")
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


async def test_a_dropped_connection_is_retried_unless_the_call_is_not_idempotent():
    dropped = httpx.RemoteProtocolError("peer closed connection")
    svc, seen = service(scripted(dropped, httpx.Response(200, json={"id": "x"})))
    assert await svc.json("POST", "/chat/completions", json_body={}) == {"id": "x"}
    assert len(seen) == 2
    once, seen_once = service(scripted(dropped, httpx.Response(200, json={"id": "x"})))
    with pytest.raises(ProviderError) as failure:
        await once.json("POST", "/fine-tunes", json_body={}, idempotent=False)
    assert len(seen_once) == 1 and "dropped the connection" in failure.value.message


async def test_an_unreachable_service_is_a_503_and_a_slow_one_a_504():
    refused, seen = service(scripted(httpx.ConnectError("connection refused")))
    with pytest.raises(ServiceUnavailableError) as unreachable:
        await refused.json("GET", "/models")
    assert len(seen) == 3 and "https://vendor.test/v1" in unreachable.value.message
    slow, seen_slow = service(scripted(httpx.ReadTimeout("timed out")))
    with pytest.raises(ProviderTimeoutError) as timeout:
        await slow.json("GET", "/models")
    assert len(seen_slow) == 1 and "within 60 s" in timeout.value.message


async def test_vendor_refusals_map_to_400_and_other_failures_to_502():
    refused, _ = service(scripted(error(400, "max_tokens too large")))
    with pytest.raises(BadRequestError) as bad:
        await refused.json("POST", "/chat/completions", json_body={})
    assert "max_tokens too large" in bad.value.message and bad.value.provider == "vendor-1"
    missing, _ = service(scripted(error(404, "no such job")))
    with pytest.raises(VendorStatusError) as not_found:
        await missing.json("GET", "/fine-tunes/ft-1")
    assert not_found.value.status == 502 and not_found.value.vendor_status == 404
    assert not_found.value.vendor_message == "no such job"


async def test_a_rejected_configured_key_is_a_502_but_a_rejected_caller_key_a_401():
    svc, _ = service(scripted(error(401, "invalid key")))
    with pytest.raises(VendorStatusError) as configured:
        await svc.json("GET", "/models")
    assert configured.value.status == 502 and configured.value.code == "provider_auth_failed"
    with using_provider_data({"vendor_api_key": "callers-key"}), pytest.raises(AuthenticationError) as callers:
        await svc.json("GET", "/models")
    assert callers.value.status == 401


async def test_invalid_json_is_a_502():
    svc, _ = service(scripted(httpx.Response(200, content=b'{"id": "cut')))
    with pytest.raises(ProviderError) as failure:
        await svc.json("GET", "/models")
    assert failure.value.status == 502 and "invalid JSON" in failure.value.message


async def test_streams_end_at_the_marker_and_a_missing_marker_is_an_incomplete_answer():
    complete = b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'
    svc, _ = service(scripted(httpx.Response(200, content=complete, headers={"content-type": "text/event-stream"})))
    events = [e async for e in await svc.open_stream("POST", "/chat/completions", json_body={})]
    assert events == [{"n": 1}, {"n": 2}]
    cut = b'data: {"n": 1}\n\n'
    svc, _ = service(scripted(httpx.Response(200, content=cut, headers={"content-type": "text/event-stream"})))
    stream = await svc.open_stream("POST", "/chat/completions", json_body={})
    received = []
    with pytest.raises(ProviderError) as failure:
        async for event in stream:
            received.append(event)
    assert received == [{"n": 1}] and "without [DONE] after 1 events" in failure.value.message


async def test_a_refused_stream_fails_before_the_first_chunk():
    svc, _ = service(scripted(error(400, "bad tools")))
    with pytest.raises(BadRequestError):
        await svc.open_stream("POST", "/chat/completions", json_body={})


async def test_keys_never_reach_the_log_or_the_errors(caplog):
    caplog.set_level(logging.DEBUG)
    svc, _ = service(scripted(error(503, "busy")), retries=2)
    with pytest.raises(ServiceUnavailableError) as failure:
        await svc.json("POST", "/chat/completions", json_body={"model": "m"})
    assert "retry 1 of 2" in caplog.text
    assert SECRET not in caplog.text and SECRET not in failure.value.message
    assert SECRET not in repr(svc.config)


async def test_the_vendors_retry_after_reaches_the_caller_when_the_retries_are_spent(monkeypatch):
    async def no_wait(delay: float) -> None:
        return None

    monkeypatch.setattr("llama_stack.providers.utils.remote.service.asyncio.sleep", no_wait)
    svc, _ = service(scripted(error(429, headers={"Retry-After": "120"})))
    with pytest.raises(ServiceUnavailableError) as failure:
        await svc.json("GET", "/models")
    assert failure.value.retry_after == 120.0


async def test_a_credential_the_client_put_in_the_body_does_not_come_back_in_an_error(caplog):
    """A vendor echoing the request body (a Weights & Biases key in a training job) in its error."""
    caplog.set_level(logging.DEBUG)
    wandb_key = "wandb-client-key-0123456789"

    def echo_body(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)["wandb_api_key"]
        return httpx.Response(400, json={"error": {"message": f"rejected job: W&B refused {sent}"}})

    svc, _ = service(echo_body)
    with pytest.raises(BadRequestError) as failure:
        await svc.json("POST", "/fine-tunes", json_body={"model": "m", "wandb_api_key": wandb_key})
    assert "rejected job" in failure.value.message
    assert wandb_key not in failure.value.message and wandb_key not in caplog.text
