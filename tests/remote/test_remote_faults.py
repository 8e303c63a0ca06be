"""Together failing in every way it can, behind a real `llama-stack run` server.

Each test scripts a fault on the fake (`fake.fail`), checks what the server's client sees (status, a message
naming the provider, how many calls Together got), then that the server is still up and answering: /health
and a normal request. The server runs with 2 retries a millisecond apart, a 1 s timeout, and debug logs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.together import API_KEY
from fakes.vendor_server import FakeVendor, Fault
from remote.conftest import write_distribution
from support import serving

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import ProviderError, ProviderTimeoutError, ServiceUnavailableError
from llama_stack.client import LlamaStackClient

pytestmark = pytest.mark.slow

CHAT = "/chat/completions"
MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
RETRIES = 2
TIMEOUT = 1.0
PROVIDER = "provider 'together' (Together)"


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def server(together_server: FakeVendor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("together-faults")
    config = {
        "url": together_server.url,
        "api_key": API_KEY,
        "max_retries": RETRIES,
        "retry_backoff": 0.001,
        "timeout": TIMEOUT,
    }
    path = write_distribution(
        directory,
        {"inference": [{"provider_id": "together", "provider_type": "remote::together", "config": config}]},
        [{"model_id": "chat", "provider_id": "together", "provider_model_id": MODEL}],
    )
    log = directory / "server.log"
    with serving(path, args=["--log-level", "debug"], log=log, health_timeout=60) as served:
        yield Server(served.url, served.process, log)


def dialog(text: str) -> dict[str, Any]:
    return {"message": {"role": "user", "content": text}}


async def chat(server: Server, text: str, **options: Any) -> Any:
    async with LlamaStackClient.http(server.url) as client:
        return await client.inference.chat_completion(model="chat", dialog=dialog(text), **options)


def calls(together: FakeVendor) -> int:
    return len(together.calls("POST", "/v1" + CHAT))


async def assert_still_serving(server: Server, together: FakeVendor) -> None:
    together.faults.clear()  # faults a test queued beyond what the server asked for
    assert server.process.poll() is None
    health = httpx.get(f"{server.url}/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok", "models": {"chat": "ready"}})
    answer = await chat(server, "still there?")
    assert answer.content == "You said: still there?"


async def test_a_429_is_retried_and_the_client_never_sees_it(server, together):
    together.fail("POST", CHAT, Fault("status", status=429), times=1)

    answer = await chat(server, "hello")

    assert answer.content == "You said: hello" and answer.stop_reason == StopReason.finished_ok
    assert calls(together) == 2
    log = server.log.read_text()
    assert "failed (status 429); retry 1 of 2" in log
    assert API_KEY not in log  # debug logs included
    await assert_still_serving(server, together)


async def test_503_every_time_is_a_clear_503_after_bounded_retries(server, together):
    together.fail("POST", CHAT, Fault("status", status=503), times=50)

    response = httpx.post(f"{server.url}/inference/chat_completion", json={"model": "chat", "dialog": dialog("hi")})

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["provider"] == "together"
    assert f"{PROVIDER} is unavailable (503 on POST /v1/chat/completions, after {RETRIES} retries)" in error["message"]
    assert calls(together) == RETRIES + 1
    with pytest.raises(ServiceUnavailableError) as unavailable:  # the Python client raises the same error
        await chat(server, "hi")
    assert unavailable.value.provider == "together"
    await assert_still_serving(server, together)


async def test_a_together_that_never_answers_is_a_504_after_the_timeout(server, together):
    together.fail("POST", CHAT, Fault("hang"))

    with pytest.raises(ProviderTimeoutError) as timed_out:
        await chat(server, "hi")

    assert timed_out.value.status == 504 and timed_out.value.provider == "together"
    assert f"{PROVIDER} did not answer POST /chat/completions within 1 s" in timed_out.value.message
    assert calls(together) == 1
    await assert_still_serving(server, together)


async def test_a_stream_cut_midway_gives_the_chunks_so_far_then_an_error_event(server, together):
    together.fail("POST", CHAT, Fault("cut", after_events=2))
    received: list[str] = []
    async with LlamaStackClient.http(server.url) as client:
        stream = await client.inference.chat_completion(model="chat", dialog=dialog("one two three four"), stream=True)
        with pytest.raises(ProviderError) as broken:
            async for chunk in stream:
                received.append(chunk.text_delta)
    assert received == ["You", " said:"]
    assert broken.value.status == 502 and broken.value.provider == "together"
    assert f"{PROVIDER} broke off the stream of POST /chat/completions after 2 events" in broken.value.message

    # On the wire: the chunks as `data:` events, then one `event: error` with the 502.
    together.fail("POST", CHAT, Fault("cut", after_events=1))
    body = {"model": "chat", "dialog": dialog("one two"), "stream": True}
    with httpx.stream("POST", f"{server.url}/inference/chat_completion", json=body) as response:
        assert response.status_code == 200
        events = response.read().decode().strip().split("\n\n")
    assert json.loads(events[0].removeprefix("data: "))["text_delta"] == "You"
    kind, data = events[-1].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))["error"]
    assert (error["status"], error["provider"]) == (502, "together") and PROVIDER in error["message"]
    assert calls(together) == 2  # a stream that has started is not retried
    await assert_still_serving(server, together)


async def test_a_stream_together_refuses_up_front_is_a_plain_http_error(server, together):
    together.fail("POST", CHAT, Fault("status", status=503), times=RETRIES + 1)
    body = {"model": "chat", "dialog": dialog("hi"), "stream": True}
    with httpx.stream("POST", f"{server.url}/inference/chat_completion", json=body) as response:
        response.read()
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["provider"] == "together"
    await assert_still_serving(server, together)


async def test_invalid_json_from_together_is_a_502(server, together):
    together.fail("POST", CHAT, Fault("invalid_json"))

    with pytest.raises(ProviderError) as failed:
        await chat(server, "hi")

    assert failed.value.status == 502 and failed.value.provider == "together"
    assert f"{PROVIDER} answered POST /chat/completions with invalid JSON" in failed.value.message
    assert calls(together) == 1
    await assert_still_serving(server, together)


async def test_a_dropped_connection_is_retried(server, together):
    together.fail("POST", CHAT, Fault("drop"), times=1)
    answer = await chat(server, "hello")
    assert answer.content == "You said: hello"
    assert calls(together) == 2

    together.fail("POST", CHAT, Fault("drop"), times=RETRIES + 1)
    with pytest.raises(ProviderError) as dropped:
        await chat(server, "hello")
    assert f"{PROVIDER} dropped the connection during POST /chat/completions" in dropped.value.message
    assert calls(together) == 2 + RETRIES + 1
    await assert_still_serving(server, together)
