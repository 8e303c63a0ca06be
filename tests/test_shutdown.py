"""Graceful shutdown: SIGTERM and SIGINT let requests in flight finish, end the rest properly, run the
providers' shutdown and exit 0.

Most tests run a real ``llama-stack run`` process serving the replay provider (found through an entry point,
see ``replay_plugin_env``): ``slow-model`` streams its six words half a second apart, ``stalling-model``
stops after its first word until the stream is closed. The in-process tests drive the same shutdown
without signals, for what a process cannot show deterministically (a request that has not answered yet).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse
from memory_support import document, faiss_provider, memory_distribution
from support import Served, replay_plugin_env, serving, uvicorn_serving, write_replay_distribution

from llama_stack.config import ConfigError, parse_distribution
from llama_stack.resolver import Stack
from llama_stack.server import create_app
from llama_stack.shutdown import GracefulShutdown

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
REPLY = "The capital of France is Paris."
# How long a server may take past its grace period to end its requests, shut its providers down and exit
# on a machine shared with other test runs.
MARGIN = 5.0


def chat(model: str, stream: bool = True) -> dict:
    return {"model": model, "dialog": {"message": {"role": "user", "content": "Capital of France?"}}, "stream": stream}


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    return replay_plugin_env(tmp_path / "plugin")


def wait_until_refused(server: Served, timeout: float = 10.0) -> None:
    """Poll until a new connection is refused; the server must still be running then (draining)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
        except httpx.ConnectError:
            assert server.process.poll() is None, "the server exited instead of draining"
            return
        except httpx.RemoteProtocolError:
            pass  # accepted just before the listening stopped, then closed unanswered with the idle connections
        time.sleep(0.05)  # polling interval
    raise AssertionError(f"{server.url} still accepted connections {timeout}s after the signal")


def exit_status(server: Served, timeout: float) -> int:
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server did not exit within {timeout}s") from None


def events(http: httpx.Client, model: str) -> Iterator[ServerSentEvent]:
    """The SSE events of a streamed chat completion of ``model``, read as they arrive."""
    with connect_sse(http, "POST", "/inference/chat_completion", json=chat(model)) as source:
        assert source.response.status_code == 200
        yield from source.iter_sse()


# ----------------------------------------------------------------------------------------------------
# A real server process


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_stream_in_flight_finishes_after_the_signal_and_the_server_exits_0(sig, tmp_path, plugin_env):
    """The default grace period (10 s) covers the slow stream's remaining 2.5 s: every word arrives."""
    log = tmp_path / "server.log"
    with serving(write_replay_distribution(tmp_path), env=plugin_env, log=log) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        stream = events(http, "slow-model")
        first = next(stream)
        server.process.send_signal(sig)
        wait_until_refused(server)
        rest = list(stream)
        assert [e.event for e in rest] == ["message"] * len(rest)
        chunks = [json.loads(e.data) for e in [first, *rest]]
        assert "".join(c["text_delta"] for c in chunks) == REPLY
        assert chunks[-1]["stop_reason"] == "finished_ok"
        assert exit_status(server, 10 + MARGIN) == 0
    assert "providers shut down" in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_stream_outlasting_the_grace_period_ends_with_an_error_event(sig, tmp_path, plugin_env):
    """``server.shutdown_grace_seconds: 1``: the stalled stream gets a 503 ``error`` event, not a cut."""
    path = write_replay_distribution(tmp_path)
    path.write_text(path.read_text().replace("server:\n", "server:\n  shutdown_grace_seconds: 1\n"))
    with serving(path, env=plugin_env, log=tmp_path / "server.log") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        stream = events(http, "stalling-model")
        assert json.loads(next(stream).data)["text_delta"] == "The"
        signalled = time.monotonic()
        server.process.send_signal(sig)
        rest = list(stream)
        ended = time.monotonic() - signalled
        assert [e.event for e in rest] == ["error"]
        error = json.loads(rest[0].data)["error"]
        assert (error["status"], error["type"], error["code"]) == (503, "service_unavailable", "server_shutting_down")
        assert "shutting down" in error["message"]
        assert ended >= 1.0  # the grace period was given
        assert exit_status(server, 1 + MARGIN - ended) == 0


@pytest.mark.slow
def test_a_second_signal_ends_the_streams_at_once(tmp_path, plugin_env):
    """``--shutdown-grace 60``: draining refuses new connections, and a second SIGTERM does not wait out the 60 s."""
    with serving(write_replay_distribution(tmp_path), env=plugin_env, args=["--shutdown-grace", "60"]) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        stream = events(http, "stalling-model")
        next(stream)
        server.process.send_signal(signal.SIGTERM)
        wait_until_refused(server)
        server.process.send_signal(signal.SIGTERM)
        assert [json.loads(e.data)["error"]["code"] for e in stream] == ["server_shutting_down"]
        assert exit_status(server, MARGIN) == 0


@pytest.mark.slow
def test_the_faiss_index_saved_at_shutdown_is_loaded_at_the_next_start(tmp_path, plugin_env):
    """SIGTERM runs the providers' shutdown: faiss writes the bank's index, and the next start reads it
    instead of rebuilding it from SQLite."""
    replay = [{"provider_id": "replay", "provider_type": "inline::replay", "config": {}}]
    embedder = [{"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"}]
    path = memory_distribution(
        tmp_path, faiss_provider(embedding_model="replay-embedder"), inference=replay, model_list=embedder
    )
    index_dir = tmp_path / "state" / "faiss" / "memory.sqlite.faiss"
    docs = [document("paris", "Paris is the capital of France."), document("llama", "A llama is a camelid.")]

    with serving(path, env=plugin_env, log=tmp_path / "first.log") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        assert (
            http.post("/memory_banks/register", json={"bank_uuid": "b", "bank_name": "B", "config": {}}).status_code
            == 200
        )
        assert http.post("/memory_bank/insert", params={"bank_uuid": "b"}, json=docs).status_code == 200
        assert not list(index_dir.glob("bank-*.index"))  # two documents are too few to save the index for
        server.process.send_signal(signal.SIGTERM)
        assert exit_status(server, 10 + MARGIN) == 0
    assert len(list(index_dir.glob("bank-*.index"))) == 1

    second = tmp_path / "second.log"
    with serving(path, env=plugin_env, log=second) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        answer = http.post(
            "/memory_bank/query", params={"bank_uuid": "b"}, json={"query": "A llama is a camelid.", "k": 1}
        )
        assert answer.json()["chunks"][0]["document_uuid"] == "llama"
    started = second.read_text()
    assert "memory bank 'b': index loaded from" in started
    assert "index rebuilt" not in started


# ----------------------------------------------------------------------------------------------------
# The setting


def test_the_grace_period_is_a_server_setting_of_at_most_an_hour(tmp_path):
    path = write_replay_distribution(tmp_path)
    assert parse_distribution(path.read_text(), "replay.yaml").server.shutdown_grace_seconds == 10
    negative = path.read_text().replace("server:\n", "server:\n  shutdown_grace_seconds: -1\n")
    with pytest.raises(
        ConfigError, match=r"server\.shutdown_grace_seconds: Input should be greater than or equal to 0"
    ):
        parse_distribution(negative, "replay.yaml")
    with pytest.raises(
        ConfigError, match=r"server\.shutdown_grace_seconds: Input should be less than or equal to 3600"
    ):
        parse_distribution(negative.replace("-1", "3601"), "replay.yaml")


# ----------------------------------------------------------------------------------------------------
# In process: the same shutdown, begun by a call instead of a signal


@pytest.fixture
async def draining_server(tmp_path, replay_registry):
    stack = Stack.from_distribution(write_replay_distribution(tmp_path), registry=replay_registry)
    await stack.start()
    shutdown = GracefulShutdown(grace_seconds=0.5)
    try:
        async with uvicorn_serving(shutdown.wrap(create_app(stack))) as url:
            yield url, shutdown, stack.providers["replay"].impl
    finally:
        shutdown.end_requests("the test is over")  # no grace timer left on the session's loop
        await stack.shutdown()


async def test_a_request_that_has_not_answered_by_the_end_of_the_grace_period_gets_a_503(draining_server):
    url, shutdown, replay = draining_server
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        # slow-model takes 3 s to answer its six words, past the 0.5 s grace period.
        answer = asyncio.ensure_future(http.post("/inference/chat_completion", json=chat("slow-model", stream=False)))
        deadline = time.monotonic() + 10
        while not replay.requests:  # until the provider has the request
            assert time.monotonic() < deadline and not answer.done()
            await asyncio.sleep(0.01)
        shutdown.begin("test")
        response = await answer
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "server_shutting_down"

        refused = await http.get("/models/list")  # a request on a connection still open while draining
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "server_shutting_down")


async def test_requests_that_finish_within_the_grace_period_are_answered(draining_server):
    url, shutdown, replay = draining_server
    shutdown.grace_seconds = 10
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        answer = asyncio.ensure_future(http.post("/inference/chat_completion", json=chat("slow-model", stream=False)))
        deadline = time.monotonic() + 10
        while not replay.requests:
            assert time.monotonic() < deadline and not answer.done()
            await asyncio.sleep(0.01)
        shutdown.begin("test")
        response = await answer
    assert response.status_code == 200
    assert response.json()["content"] == REPLY
