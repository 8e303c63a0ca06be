"""Vendor keys stay in: whatever a vendor echoes back, no key reaches a client or a log line.

The fake vendors run in their "echo headers in errors" mode: every error they answer quotes the request's
headers, key included, as a careless vendor or a debugging proxy would. Each remote route is made to fail
through a real server (``create_app`` served in this event loop), once with the key from the provider's
config and once with a key the caller sends in the provider-data header. The bytes the server answered
(error bodies and streamed error events) and the captured logs must hold neither key, and the error must
still carry the vendor's own message.

The first tests pin the :class:`Redactor` itself: the encoded and labelled forms of a key it catches, and
what it leaves alone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fakes.openai_compatible import make_openai_compatible_fake
from fakes.together_fine_tunes import LLAMA_8B
from fakes.vendor_server import FakeVendor, Fault, FaultKind
from memory_support import document
from remote.conftest import FAST_RETRIES, write_distribution
from remote.training_support import inline_dataset, jsonl, training_config, training_request
from support import uvicorn_serving

from llama_stack.apis.errors import LlamaStackError
from llama_stack.client import LlamaStackClient
from llama_stack.providers.utils.remote import RemoteServiceConfig
from llama_stack.providers.utils.remote.redaction import REDACTED, Redactor, excerpt
from llama_stack.request_context import using_provider_data
from llama_stack.resolver import Stack
from llama_stack.server import create_app

CONFIG_KEY = "sk-config-Zk3v9Qw7Lp2x/Hd8+"
REQUEST_KEY = "sk-request-Mb8Tn4Rc6Ys1Vq0"
ASK = {"message": {"role": "user", "content": "What is the capital of France?"}}


# ------------------------------------------------------------------------------------------ the redactor
def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "echo",
    [
        f"invalid key {CONFIG_KEY}",
        f"Authorization: Bearer {CONFIG_KEY}",
        f"key={quote(CONFIG_KEY, safe='')}",
        json.dumps({"headers": {"x-api-key": CONFIG_KEY}}),
        CONFIG_KEY.replace("/", "\\/"),
        _basic("operator", CONFIG_KEY),
        _basic(CONFIG_KEY, ""),
        "token " + base64.urlsafe_b64encode(b"k=" + CONFIG_KEY.encode()).decode(),
    ],
    ids=["plain", "header", "url-encoded", "json", "escaped-slash", "basic-password", "basic-user", "urlsafe-base64"],
)
def test_a_configured_key_is_caught_written_any_way(echo):
    redactor = Redactor(RemoteServiceConfig(url="https://vendor.test/v1", api_key=CONFIG_KEY))
    scrubbed = redactor.error_text(f"vendor failed: {echo}; try again")
    assert REDACTED in scrubbed and scrubbed.startswith("vendor failed: ") and scrubbed.endswith("; try again")
    for form in (CONFIG_KEY, quote(CONFIG_KEY, safe=""), base64.b64encode(CONFIG_KEY.encode()).decode()[4:-4]):
        assert form not in scrubbed


@pytest.mark.parametrize(
    ("echo", "kept"),
    [
        ("authorization: Bearer unknown-proxy-token\nhost: vendor", "host: vendor"),
        ('{"Authorization": "Bearer abc", "Host": "vendor"}', '"Host": "vendor"'),
        ("{'X-Api-Key': 'abcdef', 'accept': '*/*'}", "'accept': '*/*'"),
        ('{"wandb_api_key": "wandb-secret", "model": "m"}', '"model": "m"'),
        ("GET /v1/models?api_key=abcd1234&limit=2", "&limit=2"),
        ("proxy https://bob:hunter2@proxy.test:3128 refused", "@proxy.test:3128 refused"),
        (_basic("bob", "pw"), "Basic "),
    ],
    ids=["header-line", "json", "python-dict", "prefixed-field", "query", "url-password", "basic"],
)
def test_credentials_nobody_configured_are_caught_by_their_labels(echo, kept):
    scrubbed = Redactor().error_text(echo)
    assert REDACTED in scrubbed and kept in scrubbed
    assert not any(
        secret in scrubbed
        for secret in ("unknown-proxy-token", "abcdef", "wandb-secret", "abcd1234", "hunter2", "Ym9iOnB3")
    )


def test_the_requests_own_credentials_are_caught_but_not_other_provider_data():
    redactor = Redactor(RemoteServiceConfig(url="https://vendor.test/v1"))
    with using_provider_data({"vendor_api_key": REQUEST_KEY, "eos_token": "</s>", "region": "eu-west-1"}):
        assert (
            redactor.error_text(f"bad key {REQUEST_KEY} near </s> in eu-west-1")
            == f"bad key {REDACTED} near </s> in eu-west-1"
        )


def test_messages_without_credentials_and_answers_are_left_alone():
    redactor = Redactor(RemoteServiceConfig(url="https://vendor.test/v1", api_key=CONFIG_KEY))
    message = "Basic authentication is not supported; max_tokens must be at most 4096 (model meta-llama/Llama-3)"
    assert redactor.error_text(message) == message
    # An answer may speak of bearer tokens; only the key itself leaves it.
    answer = {"choices": [{"message": {"content": f"Send 'Authorization: Bearer <token>'; yours is {CONFIG_KEY}"}}]}
    cleaned = redactor.answer(answer, json.dumps(answer))
    assert cleaned["choices"][0]["message"]["content"] == f"Send 'Authorization: Bearer <token>'; yours is {REDACTED}"
    untouched = {"choices": [{"message": {"content": "Authorization: Bearer <token>"}}]}
    assert redactor.answer(untouched, json.dumps(untouched)) is untouched


def test_an_excerpt_is_cut_after_scrubbing_so_no_half_key_survives():
    answer = {"unexpected": "x" * 180, "authorization": "Bearer " + "k" * 64}
    text = excerpt(answer, limit=230)
    assert "kkkk" not in text and '"authorization": "[redacted]"' in text


# ------------------------------------------------------------------------------- the routes, end to end
@dataclass
class Served:
    """One vendor's stack behind a real server, and every answer the server has given (raw bytes)."""

    url: str
    fake: FakeVendor
    answers: list[tuple[int, bytes]] = field(default_factory=list)


def _recording(app: Any, served: list[tuple[int, bytes]]) -> Any:
    """The app, keeping each response's status and body as sent (streamed bodies whole)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        answer: list[Any] = [0, b""]

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message["status"]
            elif message["type"] == "http.response.body":
                answer[1] += message.get("body", b"")
                if not message.get("more_body"):
                    served.append((answer[0], answer[1]))
            await send(message)

        await app(scope, receive, keep)

    return wrapped


def _config(fake: FakeVendor, **extra: Any) -> dict[str, Any]:
    return {"url": fake.url, "api_key": CONFIG_KEY, **FAST_RETRIES, **extra}


def _together_stack(fake: FakeVendor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    def provider(api: str, **extra: Any) -> list[dict[str, Any]]:
        return [
            {"provider_id": f"together-{api}", "provider_type": "remote::together", "config": _config(fake, **extra)}
        ]

    providers = {
        "inference": provider("inference"),
        "safety": provider("safety"),
        "tool_runtime": provider("tools", image_model="fake/flux"),
        "reward_scoring": provider("scoring", judge_model="fake/judge-70b"),
        "post_training": provider("training"),
        "memory_banks": [
            {"provider_id": "faiss", "provider_type": "inline::faiss", "config": {"embedding_model": "embedder"}}
        ],
    }
    models = [
        {
            "model_id": "chat",
            "provider_id": "together-inference",
            "provider_model_id": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        },
        {
            "model_id": "embedder",
            "provider_id": "together-inference",
            "provider_model_id": "togethercomputer/m2-bert-80M-8k-retrieval",
            "model_type": "embedding",
        },
        {
            "model_id": "reranker",
            "provider_id": "together-inference",
            "provider_model_id": "Salesforce/Llama-Rank-V1",
            "model_type": "rerank",
        },
    ]
    return providers, models


def _emissary_stack(fake: FakeVendor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    def provider(api: str, **extra: Any) -> list[dict[str, Any]]:
        return [
            {"provider_id": f"emissary-{api}", "provider_type": "remote::emissary", "config": _config(fake, **extra)}
        ]

    providers = {
        "inference": provider("inference"),
        "safety": provider("safety", classifier="safety-classifier-deployment"),
        "reward_scoring": provider("scoring"),
        "post_training": provider("training"),
    }
    models = [
        {"model_id": "chat", "provider_id": "emissary-inference", "provider_model_id": "Llama-3.2-1B-Instruct"},
        {
            "model_id": "embedder",
            "provider_id": "emissary-inference",
            "provider_model_id": "Llama-3.2-1B-Instruct",
            "model_type": "embedding",
        },
    ]
    return providers, models


def _openai_compat_stack(fake: FakeVendor) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = {**_config(fake), "url": fake.url + "/v1", "check_models": False}
    providers = {"inference": [{"provider_id": "compat", "provider_type": "remote::openai-compat", "config": config}]}
    models = [
        {"model_id": "chat", "provider_id": "compat", "provider_model_id": "served-chat"},
        {
            "model_id": "embedder",
            "provider_id": "compat",
            "provider_model_id": "served-embedder",
            "model_type": "embedding",
        },
    ]
    return providers, models


STACKS = {"together": _together_stack, "emissary": _emissary_stack, "openai-compat": _openai_compat_stack}
PROVIDER_DATA_KEYS = {
    "together": "together_api_key",
    "emissary": "emissary_api_key",
    "openai-compat": "openai_compat_api_key",
}


@pytest.fixture(scope="module")
def openai_compatible_server() -> Iterator[FakeVendor]:
    fake = make_openai_compatible_fake().start()
    yield fake
    fake.stop()


@pytest.fixture
def openai_compatible(openai_compatible_server: FakeVendor) -> Iterator[FakeVendor]:
    openai_compatible_server.reset()
    yield openai_compatible_server
    violations = list(openai_compatible_server.violations)
    openai_compatible_server.reset()
    assert not violations, "requests to the fake OpenAI-compatible server broke its spec:\n" + "\n".join(violations)


@pytest.fixture(scope="module")
async def servers(
    together_server: FakeVendor,
    emissary_server: FakeVendor,
    openai_compatible_server: FakeVendor,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, Served]]:
    """Each vendor's stack (the key in its config) behind a server; the fakes accept that key meanwhile."""
    fakes = {"together": together_server, "emissary": emissary_server, "openai-compat": openai_compatible_server}
    directory = tmp_path_factory.mktemp("secrets")
    original_keys = {fake: fake.api_key for fake in fakes.values()}
    served: dict[str, Served] = {}
    async with contextlib.AsyncExitStack() as running:
        running.callback(lambda: [setattr(fake, "api_key", key) for fake, key in original_keys.items()])
        for fake in original_keys:
            fake.api_key = CONFIG_KEY  # the stacks check their models at start-up
        for vendor, make in STACKS.items():
            providers, models = make(fakes[vendor])
            stack = Stack.from_distribution(write_distribution(directory, providers, models, name=f"secrets-{vendor}"))
            await stack.start()
            running.push_async_callback(stack.shutdown)
            record = Served(url="", fake=fakes[vendor])
            record.url = await running.enter_async_context(
                uvicorn_serving(_recording(create_app(stack), record.answers))
            )
            served[vendor] = record
        yield served


@dataclass
class Call:
    """What a route's call gets: a client of the vendor's server, raw HTTP to it, and its fake."""

    client: LlamaStackClient
    http: httpx.AsyncClient
    fake: FakeVendor

    def fail(self, method: str, template: str, kind: FaultKind = "status", status: int = 500) -> None:
        self.fake.fail(method, template, Fault(kind, status=status), times=FAST_RETRIES["max_retries"] + 1)


@dataclass(frozen=True)
class Route:
    name: str
    vendor: str
    call: Callable[[Call], Awaitable[Any]]


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


def _sft(
    job_uuid: str, model: str, rows: list[dict[str, Any]], columns: dict[str, str], batch_size: int
) -> dict[str, Any]:
    dataset = inline_dataset(jsonl(rows), columns)
    fields = {
        "model": model,
        "dataset": dataset,
        "validation_dataset": dataset,
        "algorithm": "lora",
        "algorithm_config": {
            "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": False,
            "apply_lora_to_output": False,
            "rank": 8,
            "alpha": 16,
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 0.0, "weight_decay": 0.0},
        "training_config": training_config(batch_size=batch_size),
    }
    return training_request(job_uuid, fields, {})


def _generations() -> list[dict[str, Any]]:
    return [{"dialog": ASK, "k_generations": [{"role": "assistant", "content": "Paris"}]}]


# --- Together
async def _together_chat(c: Call) -> None:
    c.fail("POST", "/chat/completions")
    await c.client.inference.chat_completion(model="chat", dialog=ASK)


async def _together_stream_refused(c: Call) -> None:
    c.fail("POST", "/chat/completions")
    await _drain(await c.client.inference.chat_completion(model="chat", dialog=ASK, stream=True))


async def _together_stream_broken(c: Call) -> None:
    c.fail("POST", "/chat/completions", kind="error_event")
    await _drain(await c.client.inference.chat_completion(model="chat", dialog=ASK, stream=True))


async def _together_completion(c: Call) -> None:
    c.fail("POST", "/completions")
    await c.client.inference.completion(model="chat", content="Paris is")


async def _together_embeddings(c: Call) -> None:
    c.fail("POST", "/embeddings")
    await c.client.inference.embeddings(model="embedder", contents=["Paris"])


async def _together_rerank(c: Call) -> None:
    c.fail("POST", "/rerank")
    await c.client.inference.rerank(model="reranker", query="capital", documents=["Paris", "Rome"])


async def _together_shield(c: Call) -> None:
    c.fail("POST", "/chat/completions")
    await c.client.safety.run_shield(shield_type="llama_guard", messages=[ASK["message"]])


async def _together_image(c: Call) -> None:
    c.fail("POST", "/images/generations")
    await c.client.tool_runtime.invoke_tool(tool_name="image_gen", arguments={"query": "a llama"})


async def _together_code(c: Call) -> None:
    c.fake.fail("POST", "/tci/execute", Fault("status", status=500))  # running code is not retried
    await c.client.tool_runtime.invoke_tool(tool_name="code_interpreter", arguments={"code": "print(1)"})


async def _together_scoring(c: Call) -> None:
    c.fail("POST", "/chat/completions")
    await c.client.reward_scoring.reward_score(model="x", prompt_generations=_generations())


def _together_job(job_uuid: str) -> dict[str, Any]:
    rows = [{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}]
    return _sft(job_uuid, LLAMA_8B, rows, {"messages": "dialog"}, 8)


async def _together_training(c: Call) -> None:
    c.fake.fail("POST", "/fine-tunes", Fault("status", status=500))
    await c.client.post_training.supervised_fine_tune(**_together_job(f"job-{uuid.uuid4().hex[:8]}"))


async def _together_training_status(c: Call) -> None:
    job_uuid = f"job-{uuid.uuid4().hex[:8]}"
    await c.client.post_training.supervised_fine_tune(**_together_job(job_uuid))
    c.fail("GET", "/fine-tunes/{id}")
    await c.client.post_training.get_training_job_status(job_uuid=job_uuid)


async def _together_memory(c: Call) -> None:
    bank = f"bank-{uuid.uuid4().hex[:8]}"
    await c.client.memory_banks.register_memory_bank(bank_uuid=bank, bank_name="Facts")
    c.fail("POST", "/embeddings")
    await c.client.memory_banks.insert_memory_documents(
        bank_uuid=bank, documents=[document("paris", "Paris is the capital of France.")]
    )


async def _openai_route(c: Call, *, stream: bool, kind: FaultKind = "status") -> None:
    c.fail("POST", "/v1/chat/completions" if c.fake.name == "openai-compatible" else "/chat/completions", kind=kind)
    body = {"model": "chat", "messages": [ASK["message"]], "stream": stream}
    async with c.http.stream("POST", "/v1/chat/completions", json=body) as response:
        await response.aread()


# --- Emissary
async def _emissary_chat(c: Call) -> None:
    c.fail("POST", "/v1/chat/completions")
    await c.client.inference.chat_completion(model="chat", dialog=ASK)


async def _emissary_embeddings(c: Call) -> None:
    c.fail("POST", "/v1/embeddings")
    await c.client.inference.embeddings(model="embedder", contents=["Paris"])


async def _emissary_shield(c: Call) -> None:
    c.fail("POST", "/v1/classification")
    await c.client.safety.run_shield(shield_type="llama_guard", messages=[ASK["message"]])


async def _emissary_scoring(c: Call) -> None:
    c.fail("POST", "/v1/classification")
    await c.client.reward_scoring.reward_score(model="reward-classifier-deployment", prompt_generations=_generations())


async def _emissary_training(c: Call) -> None:
    c.fake.fail("POST", "/v1/projects/{project_id}/training-jobs", Fault("status", status=500))
    rows = [{"prompt": "1 + 1?", "completion": "2"}]
    await c.client.post_training.supervised_fine_tune(
        **_sft(
            f"job-{uuid.uuid4().hex[:8]}", "Llama-3.2-1B-Instruct", rows, {"prompt": "text", "completion": "text"}, 2
        )
    )


# --- openai-compat
async def _compat_chat(c: Call) -> None:
    c.fail("POST", "/v1/chat/completions")
    await c.client.inference.chat_completion(model="chat", dialog=ASK)


async def _compat_stream_broken(c: Call) -> None:
    c.fail("POST", "/v1/chat/completions", kind="error_event")
    await _drain(await c.client.inference.chat_completion(model="chat", dialog=ASK, stream=True))


async def _compat_completion(c: Call) -> None:
    c.fail("POST", "/v1/completions")
    await c.client.inference.completion(model="chat", content="Paris is")


async def _compat_embeddings(c: Call) -> None:
    c.fail("POST", "/v1/embeddings")
    await c.client.inference.embeddings(model="embedder", contents=["Paris"])


async def _openai_chat(c: Call) -> None:
    await _openai_route(c, stream=False)


async def _openai_stream(c: Call) -> None:
    await _openai_route(c, stream=True, kind="error_event")


ROUTES = [
    Route("chat", "together", _together_chat),
    Route("chat-stream-refused", "together", _together_stream_refused),
    Route("chat-stream-error-event", "together", _together_stream_broken),
    Route("completion", "together", _together_completion),
    Route("embeddings", "together", _together_embeddings),
    Route("rerank", "together", _together_rerank),
    Route("run-shield", "together", _together_shield),
    Route("image-gen", "together", _together_image),
    Route("code-interpreter", "together", _together_code),
    Route("reward-scoring", "together", _together_scoring),
    Route("post-training", "together", _together_training),
    Route("post-training-status", "together", _together_training_status),
    Route("memory-insert", "together", _together_memory),
    Route("v1-chat-completions", "together", _openai_chat),
    Route("v1-chat-completions-stream", "together", _openai_stream),
    Route("chat", "emissary", _emissary_chat),
    Route("embeddings", "emissary", _emissary_embeddings),
    Route("run-shield", "emissary", _emissary_shield),
    Route("reward-scoring", "emissary", _emissary_scoring),
    Route("post-training", "emissary", _emissary_training),
    Route("chat", "openai-compat", _compat_chat),
    Route("chat-stream-error-event", "openai-compat", _compat_stream_broken),
    Route("completion", "openai-compat", _compat_completion),
    Route("embeddings", "openai-compat", _compat_embeddings),
    Route("v1-chat-completions", "openai-compat", _openai_chat),
    Route("v1-chat-completions-stream", "openai-compat", _openai_stream),
]


def _leaks(text: str, key: str) -> list[str]:
    """The forms of ``key`` found in ``text``."""
    forms = {"plain": key, "url-encoded": quote(key, safe=""), "base64": base64.b64encode(key.encode()).decode()[:-4]}
    return [name for name, form in forms.items() if form in text]


@pytest.mark.parametrize("source", ["config", "request"])
@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.vendor}-{r.name}" for r in ROUTES])
async def test_an_echoing_vendor_never_gets_a_key_to_the_client_or_the_log(
    route, source, servers, together, emissary, openai_compatible, caplog
):
    served = servers[route.vendor]
    fake = served.fake
    key = CONFIG_KEY if source == "config" else REQUEST_KEY
    provider_data = {PROVIDER_DATA_KEYS[route.vendor]: REQUEST_KEY} if source == "request" else None
    fake.api_key = key  # the fake accepts only the key the request should carry
    fake.echo_headers_in_errors = True
    served.answers.clear()
    caplog.set_level(logging.DEBUG)
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            if provider_data:
                http.headers["X-LlamaStack-Provider-Data"] = json.dumps(provider_data)
            async with LlamaStackClient.http(served.url, provider_data=provider_data) as client:
                try:
                    await route.call(Call(client, http, fake))
                except LlamaStackError as exc:
                    assert exc.status >= 500, exc.to_body()
    finally:
        fake.api_key = CONFIG_KEY

    # The vendor did get the key, and echoed it: the request that failed carried it.
    failed = fake.requests[-1]
    assert key in (failed.headers.get("authorization", "") + failed.headers.get("x-api-key", ""))
    # The client got the failure (a 5xx, or an error event in a 200 stream) with the vendor's message...
    errors = [body.decode() for status, body in served.answers if status >= 500 or b'"error"' in body]
    assert errors, f"no error reached the client: {served.answers}"
    relayed = "\n".join(errors)
    assert "fault 500" in relayed and REDACTED in relayed
    # ...and neither key, in any answer or any log line.
    everything = "\n".join(body.decode() for _, body in served.answers)
    assert _leaks(everything, CONFIG_KEY) == [] and _leaks(everything, REQUEST_KEY) == []
    assert _leaks(caplog.text, CONFIG_KEY) == [] and _leaks(caplog.text, REQUEST_KEY) == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, 400), (401, 502), (429, 503), (503, 503)],
)
async def test_every_relayed_vendor_status_is_scrubbed(status, expected, servers, together, caplog):
    served = servers["together"]
    together.echo_headers_in_errors = True
    served.answers.clear()
    caplog.set_level(logging.DEBUG)
    async with LlamaStackClient.http(served.url) as client:
        together.fail(
            "POST", "/chat/completions", Fault("status", status=status), times=FAST_RETRIES["max_retries"] + 1
        )
        with pytest.raises(LlamaStackError) as failure:
            await client.inference.chat_completion(model="chat", dialog=ASK)
    assert failure.value.status == expected and f"fault {status}" in failure.value.message
    assert REDACTED in failure.value.message
    everything = "\n".join(body.decode() for _, body in served.answers)
    assert _leaks(everything, CONFIG_KEY) == [] and _leaks(caplog.text, CONFIG_KEY) == []


async def test_a_vendor_refusing_a_wrong_key_does_not_show_it(servers, together, caplog):
    served = servers["together"]
    together.echo_headers_in_errors = True  # "Invalid API key sk-..." and the headers
    served.answers.clear()
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-request-key-42"
    async with LlamaStackClient.http(served.url, provider_data={"together_api_key": wrong}) as client:
        with pytest.raises(LlamaStackError) as failure:
            await client.inference.chat_completion(model="chat", dialog=ASK)
    assert failure.value.status == 401 and "Invalid API key" in failure.value.message
    everything = "\n".join(body.decode() for _, body in served.answers)
    assert _leaks(everything, wrong) == [] and _leaks(caplog.text, wrong) == []
