"""Schemathesis over the server's own OpenAPI document: whatever a client sends, no 5xx, every 4xx a JSON error
with a message, and every answer (status, content type, body, each streamed event) as the document declares.

Three servers, each fuzzed over real HTTP on 127.0.0.1:

- ``replay``, the widest and fastest run: every route, against a stack in this process (uvicorn on a thread
  of its own) serving the test-only replay models and faiss memory banks embedded by the replay embedder, so
  that requests get past validation into the router, the providers and the bank store in milliseconds.
- ``local``: `llama-stack run local` (SmolLM2 on llama.cpp, faiss, MiniLM) in a subprocess of its own, on its
  inference and memory routes, each generation bounded to a few tokens.
- ``together``: `llama-stack run together` pointed at the fake Together API (tests/fakes), on the routes
  Together serves (inference, safety, post-training, reward scoring, tools); the fake must have received
  only requests its spec allows.

Generated requests name the served models, an existing memory bank and the training jobs the run started
most of the time (a random string would only ever meet a 404), and every http(s):// URL in them is pointed
at a refused port on 127.0.0.1, so that the run never reaches the network. A failure prints the request as a
curl command. 501 (documented: the provider cannot do what was asked) is the one 5xx allowed.

``make test`` runs a bounded run with a fixed seed (the same requests each time); ``make fuzz`` a longer one
with the coverage phase (boundary and schema-violating values of every field) and a fresh seed:
``FUZZ_EXAMPLES`` sets the examples per route, ``FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis.configuration
import pytest
import schemathesis
import uvicorn
import yaml
from fakes import together_tools
from fakes.together import API_KEY as TOGETHER_KEY
from fakes.together import make_together_fake
from fakes.together_fine_tunes import LLAMA_8B
from fakes.vendor_server import FakeVendor
from hypothesis import strategies as st
from remote.training_support import inline_dataset, jsonl, training_config
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import ReplayPlugin, serving

from llama_stack.openapi import build_openapi
from llama_stack.plugins import discover_providers
from llama_stack.resolver import Stack
from llama_stack.server import create_app

# `make fuzz` sets FUZZ_EXAMPLES (examples per route); its seed is a fresh one unless FUZZ_SEED is given.
# The suite's run has a fixed seed: the same requests every time.
LONG_RUN = int(os.environ.get("FUZZ_EXAMPLES", "0"))
SEED = int(os.environ.get("FUZZ_SEED") or (random.SystemRandom().getrandbits(32) if LONG_RUN else 20240610))
# Examples per route in the fuzzing phase, per server; routes a server does not serve (all 404s) get fewer.
EXAMPLES = {"replay": LONG_RUN or 25, "together": LONG_RUN or 20, "local": max(LONG_RUN // 10, 10)}
UNSERVED_EXAMPLES = max(LONG_RUN // 10, 3)
# The coverage phase sends hundreds of boundary cases per large schema: the long run only.
COVERAGE = LONG_RUN > 0

REQUEST_TIMEOUT_S = 120.0
# Tokens the local model may generate per request (and choices per OpenAI request): enough to exercise
# generation, stopping and streaming, few enough that a request takes a fraction of a second.
LOCAL_MAX_TOKENS = 4
LOCAL_MAX_CHOICES = 2
LOCAL_MAX_BATCH = 2  # prompts or dialogs per batch request
LOCAL_MAX_GENERATIONS = 2  # synthetic data: generations per prompt

# Fields naming a model, by the type of model they take ("route": the type the route serves).
MODEL_FIELDS = {"model": "route", "embedding_model": "embedding", "rerank_model": "rerank"}
# How often a generated id is replaced by a served one; routes that create a bank rarely get an existing id.
FILL_PROBABILITY = 0.8
EXISTING_BANK_PROBABILITY = 0.2
BANK_CREATING_PATHS = ("/memory_banks/create", "/memory_banks/register")

DOCUMENT = build_openapi()

# Hypothesis keeps caches (Unicode tables, the constants it found in the code) under .hypothesis/ in the
# working directory, example database or not: this run keeps them in a directory removed when it ends.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="llama-stack-fuzz-hypothesis-")
hypothesis.configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)


@dataclass
class Target:
    """A server being fuzzed: where it is, what it serves, and what the run got back."""

    name: str
    url: str = ""
    models: dict[str, list[str]] = field(default_factory=dict)  # model type -> ids and aliases
    bank: str = "fuzz-bank"
    bank_to_drop: str = "fuzz-bank-to-drop"  # made again before each drop that names it
    job_uuids: list[str] = field(default_factory=list)  # training jobs the run started
    dataset: str | None = None  # a dataset the server keeps, where it serves datasets
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool name -> its parameters schema
    shield_types: list[str] = field(default_factory=list)  # the shields its safety provider runs
    statuses: Counter[int] = field(default_factory=Counter)
    first_call: float | None = None
    last_call: float | None = None
    route_statuses: dict[str, set[int]] = field(default_factory=dict)  # route -> the statuses it answered

    def model_ids(self, kind: str) -> list[str]:
        return self.models.get(kind) or [model for ids in self.models.values() for model in ids]


TARGETS = {name: Target(name) for name in ("replay", "local", "together")}


# ------------------------------------------------------------------------------------------------ no network


class RefusedPort:
    """A port on 127.0.0.1 that refuses connections: bound, never listening, held for the whole run."""

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"


REFUSED = RefusedPort()


def offline(value: Any) -> Any:
    """``value`` with every http(s):// URL in it sent to the refused port instead (its path kept)."""
    if isinstance(value, str):
        scheme, separator, rest = value.partition("://")
        if separator and scheme.strip().lower() in ("http", "https"):
            return f"{REFUSED.url}/{rest.partition('/')[2]}"
        return value
    if isinstance(value, list):
        return [offline(item) for item in value]
    if isinstance(value, dict):
        return {key: offline(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------- reaching real work


def route_model_kind(path: str) -> str:
    if "embeddings" in path:
        return "embedding"
    if "rerank" in path:
        return "rerank"
    if path.startswith("/reward_scoring/"):
        return "reward"
    return "llm"


def chance(rnd: random.Random, probability: float) -> bool:
    """True with about ``probability``. Hypothesis's randoms lean to their simplest value, 0.0, which must
    give the likelier outcome."""
    if probability >= 0.5:
        return rnd.random() < probability
    return rnd.random() > 1 - probability


def fill_ids(value: Any, target: Target, path: str, rnd: random.Random) -> Any:
    """``value`` with string model and job ids replaced by served ones (each with FILL_PROBABILITY). Only
    strings are replaced, so that a request generated to break the schema still breaks it."""
    if isinstance(value, list):
        return [fill_ids(item, target, path, rnd) for item in value]
    if not isinstance(value, dict):
        return value
    filled = {}
    for key, item in value.items():
        if key in MODEL_FIELDS and isinstance(item, str) and chance(rnd, FILL_PROBABILITY):
            kind = MODEL_FIELDS[key]
            filled[key] = rnd.choice(target.model_ids(route_model_kind(path) if kind == "route" else kind))
        elif key == "job_uuid" and isinstance(item, str) and target.job_uuids and chance(rnd, FILL_PROBABILITY):
            filled[key] = rnd.choice(target.job_uuids)
        elif key == "bank_uuid" and isinstance(item, str) and chance(rnd, EXISTING_BANK_PROBABILITY):
            filled[key] = target.bank
        elif key == "shield_type" and isinstance(item, str) and target.shield_types and chance(rnd, FILL_PROBABILITY):
            filled[key] = rnd.choice(target.shield_types)
        else:
            filled[key] = fill_ids(item, target, path, rnd)
    return filled


def with_tool_arguments(body: Any, target: Target, rnd: random.Random) -> Any:
    """A tool invocation naming a tool the server lists, with a value for each required parameter, most of
    the time (the document's arguments are any object, which no tool takes)."""
    if not isinstance(body, dict) or not isinstance(body.get("tool_name"), str) or not target.tools:
        return body
    if not chance(rnd, FILL_PROBABILITY):
        return body
    name = rnd.choice(sorted(target.tools))
    parameters = target.tools[name] or {}
    samples = {"string": "a red circle", "integer": 1, "number": 0.5, "boolean": False}
    arguments = {
        parameter: samples.get((parameters.get("properties", {}).get(parameter) or {}).get("type"), "a red circle")
        for parameter in parameters.get("required", [])
    }
    return body | {"tool_name": name, "arguments": arguments}


QUESTION = "What is the capital of France?"
PLAIN_ROLES = ("system", "developer", "user", "assistant")


def plain_text(content: Any) -> str:
    if isinstance(content, str) and content.strip():
        return content
    if isinstance(content, list) and content and all(isinstance(part, str) for part in content):
        return " ".join(content).strip() or QUESTION
    return QUESTION


def plain_turns(value: Any) -> Any:
    """``value`` with every message in it (a dict with a role) a plain text turn of a plain role."""
    if isinstance(value, list):
        return [plain_turns(item) for item in value]
    if not isinstance(value, dict):
        return value
    if isinstance(value.get("role"), str):
        return {
            "role": value["role"] if value["role"] in PLAIN_ROLES else "user",
            "content": plain_text(value.get("content")),
        }
    return {key: plain_turns(item) for key, item in value.items()}


def with_plain_conversation(body: Any, rnd: random.Random) -> Any:
    """A generating request whose messages (or prompts) are plain text, half of the time. The document has one
    message schema for every role, so that nearly every message generated from it breaks a rule of its role
    (content required, tool_call_id only on tool messages, attachments the model cannot read, ...) and the
    request never reaches a model."""
    if not isinstance(body, dict) or not chance(rnd, 0.5):
        return body
    plain = plain_turns(body)
    if "content" in plain:
        plain["content"] = plain_text(plain["content"])
    if isinstance(plain.get("content_batch"), list):
        plain["content_batch"] = [plain_text(content) for content in plain["content_batch"]]
    if "prompt" in plain and not (isinstance(plain["prompt"], str) and plain["prompt"].strip()):
        plain["prompt"] = QUESTION
    return plain


DOCUMENT_PATHS = ("/memory_banks/create", "/memory_bank/insert", "/memory_bank/update")


def with_readable_documents(body: Any, rnd: random.Random) -> Any:
    """Documents of plain text, base64-encoded, each with a uuid of its own, half of the time: the document
    declares content as any string and uuid as any string, so that generated documents are almost never
    base64 or all have uuids the server takes."""
    if not isinstance(body, list) or not chance(rnd, 0.5):
        return body
    readable = []
    for index, document in enumerate(body):
        if isinstance(document, dict):
            text = f"Document {index}: {QUESTION} Paris."
            document = document | {
                "uuid": f"doc-{index}-{rnd.randrange(1_000_000)}",
                "content": base64.b64encode(text.encode()).decode(),
                "mime_type": "text/plain",
            }
        readable.append(document)
    return readable


GENERATING_PATHS = (
    "/inference/chat_completion",
    "/inference/completion",
    "/inference/batch_chat_completion",
    "/inference/batch_completion",
    "/v1/chat/completions",
    "/v1/completions",
    "/synthetic_data_generation/generate",
)


def bounded(value: Any) -> Any:
    """For the local model: generation capped at LOCAL_MAX_TOKENS tokens and LOCAL_MAX_CHOICES choices. JSON
    numbers with an integer value count (4151.0 is a valid integer); values invalid anyway (negative,
    fractional, not numbers) are kept for the server to refuse."""
    if isinstance(value, list):
        return [bounded(item) for item in value]
    if not isinstance(value, dict):
        return value
    capped = {key: bounded(item) for key, item in value.items()}
    for key, limit in (
        ("max_tokens", LOCAL_MAX_TOKENS),
        ("max_completion_tokens", LOCAL_MAX_TOKENS),
        ("n", LOCAL_MAX_CHOICES),
    ):
        number = capped.get(key)
        whole = isinstance(number, (int, float)) and not isinstance(number, bool) and float(number).is_integer()
        if whole and (number > limit or (number == 0 and key != "n")):  # 0 tokens means "until the model stops"
            capped[key] = limit
    return capped


def bounded_generation(body: Any) -> Any:
    """``bounded``, and a request that leaves max_tokens out (until the model stops: up to its whole
    context window) gets LOCAL_MAX_TOKENS."""
    body = bounded(body)
    if isinstance(body, dict):
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = LOCAL_MAX_TOKENS
        for batch in ("content_batch", "batch_dialogs", "prompts"):
            if isinstance(body.get(batch), list):
                body[batch] = body[batch][:LOCAL_MAX_BATCH]
        generations = body.get("num_generations")
        if isinstance(generations, int) and not isinstance(generations, bool) and generations > LOCAL_MAX_GENERATIONS:
            body["num_generations"] = LOCAL_MAX_GENERATIONS
    return body


def prepare(case: schemathesis.Case, target: Target, rnd: random.Random) -> schemathesis.Case:
    path = case.operation.path
    if isinstance(case.body, (dict, list)):
        body = fill_ids(case.body, target, path, rnd)
        if path in GENERATING_PATHS or path in ("/safety/run_shield", "/reward_scoring/score"):
            body = with_plain_conversation(body, rnd)
        if path == "/tool_runtime/invoke":
            body = with_tool_arguments(body, target, rnd)
        if path in DOCUMENT_PATHS:
            body = with_readable_documents(body, rnd)
        body = offline(body)
        if target.name == "local":
            body = bounded_generation(body) if path in GENERATING_PATHS else bounded(body)
        case.body = body
    if isinstance((case.path_parameters or {}).get("model"), str) and chance(rnd, FILL_PROBABILITY):
        case.path_parameters = {**case.path_parameters, "model": rnd.choice(target.model_ids(route_model_kind(path)))}
    if case.query:
        query = dict(case.query)
        bank = query.get("bank_uuid")
        if isinstance(bank, str):
            if path == "/memory_banks/drop" and chance(rnd, FILL_PROBABILITY):
                query["bank_uuid"] = target.bank_to_drop  # the others keep their bank
            elif path != "/memory_banks/drop":
                existing = EXISTING_BANK_PROBABILITY if path in BANK_CREATING_PATHS else FILL_PROBABILITY
                query["bank_uuid"] = target.bank if chance(rnd, existing) else bank
        if isinstance(query.get("job_uuid"), str) and target.job_uuids and chance(rnd, FILL_PROBABILITY):
            query["job_uuid"] = rnd.choice(target.job_uuids)
        if isinstance(query.get("dataset_id"), str) and target.dataset and chance(rnd, FILL_PROBABILITY):
            query["dataset_id"] = target.dataset
        case.query = offline(query)
    return case


def schema_for(target: Target, operations: list[dict[str, Any]]) -> schemathesis.BaseSchema:
    """The server's own document, fuzzed with ``target``'s ids; ``operations`` configures routes by tag."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["all"],
            # No example database (nothing written under .hypothesis/). Shrinking a failure against the real
            # model would take minutes: its failures are reported as found.
            "generation": {
                "max-examples": EXAMPLES[target.name],
                "database": "none",
                "no-shrink": target.name == "local",
            },
            "phases": {"coverage": {"enabled": COVERAGE}},
            # 501 is the documented "the provider cannot do what was asked" (a feature it lacks), not a failure.
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "501"]}},
            "operations": operations,
        }
    )
    schema = schemathesis.openapi.from_dict(DOCUMENT, config=config)

    @schema.hook
    def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case) -> st.SearchStrategy:
        # Hypothesis draws the substitutions too, so that a run is replayed from its seed.
        return st.randoms(use_true_random=False).map(lambda rnd: prepare(case, target, rnd))

    return schema


def fewer_examples(tags: list[str]) -> list[dict[str, Any]]:
    """Operations config: the routes of ``tags`` (APIs the server does not serve: every answer is a 404)
    get UNSERVED_EXAMPLES examples."""
    return [{"include-tag": tag, "generation": {"max-examples": UNSERVED_EXAMPLES}} for tag in tags]


# ------------------------------------------------------------------------------------------------------ checks


def error_is_json_with_a_message(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A 4xx is the server's JSON error, ``{"error": {"message": "<what was wrong>", ...}}``."""
    if not 400 <= response.status_code < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), f"a {response.status_code} answered {content_type!r}, not JSON"
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"a {response.status_code}'s body is not JSON: {response.text[:300]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    assert isinstance(message, str) and message.strip(), (
        f"a {response.status_code} without an error message: {response.text[:300]}"
    )
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_is_json_with_a_message,
]


def call(case: schemathesis.Case, target: Target) -> None:
    """Send ``case`` to ``target`` and run every check on the answer."""
    if case.operation.path == "/memory_banks/drop" and (case.query or {}).get("bank_uuid") == target.bank_to_drop:
        make_bank(target.url, target.bank_to_drop)
    target.first_call = target.first_call or time.monotonic()
    response = case.call(base_url=target.url, timeout=REQUEST_TIMEOUT_S)
    target.last_call = time.monotonic()
    target.statuses[response.status_code] += 1
    target.route_statuses.setdefault(case.operation.label, set()).add(response.status_code)
    case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": target.url})
    if case.operation.path.startswith("/post_training/") and response.status_code == 200:
        answer = response.json()
        job = answer.get("job_uuid") if isinstance(answer, dict) else None
        if isinstance(job, str) and job not in target.job_uuids:
            target.job_uuids.append(job)


# ----------------------------------------------------------------------------------------------------- servers


def make_bank(url: str, bank: str, documents: tuple[dict[str, Any], ...] = ()) -> None:
    """Create ``bank`` holding ``documents`` (a 409, when it exists already, is fine)."""
    response = httpx.post(
        f"{url}/memory_banks/create", params={"bank_uuid": bank, "bank_name": bank}, json=list(documents), timeout=120
    )
    assert response.status_code in (200, 409), response.text


# "Paris is the capital of France." and "Tea is brewed from leaves.", base64-encoded as clients send them.
BANK_DOCUMENTS = (
    {
        "uuid": "paris",
        "content": "UGFyaXMgaXMgdGhlIGNhcGl0YWwgb2YgRnJhbmNlLg==",
        "mime_type": "text/plain",
        "metadata": {"topic": "geo"},
    },
    {
        "uuid": "tea",
        "content": "VGVhIGlzIGJyZXdlZCBmcm9tIGxlYXZlcy4=",
        "mime_type": "text/plain",
        "metadata": {"year": 2024},
    },
)

REPLAY_DISTRIBUTION = {
    "name": "fuzz-replay",
    "apis": ["inference", "memory_banks"],
    "providers": {
        "inference": [{"provider_id": "replay", "provider_type": "inline::replay", "config": {}}],
        "memory_banks": [
            {
                "provider_id": "faiss",
                "provider_type": "inline::faiss",
                "config": {"embedding_model": "replay-embedder", "rerank_model": "replay-reranker"},
            }
        ],
    },
    # The replay models that answer (not the ones made to fail, stall or crash).
    "models": [
        {"model_id": "replay-model", "provider_id": "replay", "aliases": ["replay-alias"], "context_length": 4096},
        {"model_id": "counting-model", "provider_id": "replay", "metadata": {"usage": True}},
        {"model_id": "prompted-model", "provider_id": "replay", "system_prompt": "Be brief."},
        {"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"},
        {"model_id": "replay-reranker", "provider_id": "replay", "model_type": "rerank"},
    ],
}


@contextmanager
def serving_in_a_thread(distribution: Path) -> Iterator[str]:
    """The stack of ``distribution`` served by uvicorn on a thread with its own event loop (the fuzz tests
    calling it are synchronous); its base URL until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(None, log_level="warning", lifespan="off"))
    failure: list[BaseException] = []

    async def serve() -> None:
        stack = Stack.from_distribution(distribution, registry=discover_providers(extra_plugins=[ReplayPlugin()]))
        await stack.start()
        try:
            server.config.app = create_app(stack)
            await server.serve(sockets=[sock])
        finally:
            await stack.shutdown()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the waiting test
            failure.append(exc)

    thread = threading.Thread(target=run, name="fuzz-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if failure:
            raise failure[0]
        assert thread.is_alive() and time.monotonic() < deadline, "the fuzzed server did not start within 60 s"
        time.sleep(0.01)  # polling for start-up, not covering a race
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def served_models(url: str) -> dict[str, list[str]]:
    """The models a server lists, by type, each by its id and its aliases."""
    response = httpx.get(f"{url}/models/list", timeout=30)
    response.raise_for_status()
    by_type: dict[str, list[str]] = {}
    for model in response.json():
        by_type.setdefault(model.get("model_type", "llm"), []).extend([model["model_id"], *model.get("aliases", [])])
    return by_type


def ready(target: Target, url: str, shield_types: tuple[str, ...] = ()) -> Target:
    """``target`` at ``url``, with the models and tools it serves, and an existing bank where it serves banks."""
    target.url = url
    target.models = served_models(url)
    target.shield_types = list(shield_types)
    apis = {provider["api"] for provider in httpx.get(f"{url}/providers/list", timeout=30).json()}
    if "memory_banks" in apis:
        make_bank(url, target.bank, BANK_DOCUMENTS)
    if "tool_runtime" in apis:
        tools = httpx.get(f"{url}/tool_runtime/list", timeout=30).json()
        target.tools = {tool["tool_name"]: tool.get("parameters") or {} for tool in tools}
    return target


class FuzzSummary:
    """A pytest plugin for the end of the run's summary: one line per fuzzed server, with how many requests
    it got in how long and what they were answered."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, target: Target) -> None:
        total = sum(target.statuses.values())
        answered = ", ".join(f"{status}: {count}" for status, count in sorted(target.statuses.items()))
        seconds = (target.last_call or 0.0) - (target.first_call or 0.0)
        self.lines.append(
            f"{target.name}: {total} requests in {seconds:.0f} s (FUZZ_SEED={SEED}); answered {answered or 'nothing'}"
        )
        # Where the run did not reach: routes never answered 2xx, but those only ever answered 404 (an API this
        # server does not serve; or 405 to the coverage phase's other methods) counted apart.
        unserved = {route for route, statuses in target.route_statuses.items() if statuses <= {404, 405}}
        never = sorted(
            route for route, statuses in target.route_statuses.items() if route not in unserved and min(statuses) >= 300
        )
        self.lines.append(
            f"  of {len(target.route_statuses)} routes, {len(unserved)} answered only 404 (not served here), "
            f"{len(never)} others never 2xx{': ' + ', '.join(never) if never else ''}"
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep("-", "fuzz runs")
        for line in self.lines:
            terminalreporter.write_line(line)


@contextmanager
def summarized(request: pytest.FixtureRequest, target: Target) -> Iterator[None]:
    summary = request.config.pluginmanager.get_plugin("fuzz-summary")
    if summary is None:
        summary = FuzzSummary()
        request.config.pluginmanager.register(summary, "fuzz-summary")
    try:
        yield
    finally:
        summary.add(target)


@pytest.fixture(scope="module")
def replay_server(request: pytest.FixtureRequest) -> Iterator[Target]:
    with summarized(request, TARGETS["replay"]), tempfile.TemporaryDirectory(prefix="llama-stack-fuzz-") as directory:
        path = Path(directory) / "fuzz-replay.yaml"
        document = REPLAY_DISTRIBUTION | {"storage": {"dir": str(Path(directory) / "state")}}
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        with serving_in_a_thread(path) as url:
            yield ready(TARGETS["replay"], url)


@pytest.fixture(scope="module")
def local_fuzz_server(request: pytest.FixtureRequest) -> Iterator[Target]:
    """`llama-stack run local` of its own: the run creates banks and may hit a native crash, which must not
    reach the session's shared server."""
    with summarized(request, TARGETS["local"]), tempfile.TemporaryDirectory(prefix="llama-stack-fuzz-") as storage:
        # The server's output goes to a file: a pipe nobody reads fills up under the errors a fuzz run causes
        # and blocks the server.
        log = Path(storage) / "server.log"
        with serving("local", args=["--env", f"LLAMA_STACK_STORAGE={storage}"], log=log) as served:
            target = ready(TARGETS["local"], served.url)
            start_local_training_job(target)
            try:
                yield target
            finally:
                cancel_every_job(target)  # local's jobs outlive the server (by design): none may outlive the run


def start_local_training_job(target: Target) -> None:
    """A dataset, and a LoRA job on it cancelled at once: the dataset and job routes have one each to read."""
    rows = [{"dialog": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."}]}]
    dataset = inline_dataset(jsonl(rows), {"dialog": "dialog"})
    created = httpx.post(f"{target.url}/datasets/create", json={"uuid": "fuzz-data", "dataset": dataset}, timeout=60)
    assert created.status_code == 200, created.text
    target.dataset = "fuzz-data"
    model = target.model_ids("llm")[0]
    response = httpx.post(f"{target.url}/post_training/supervised_fine_tune/", json=local_sft(model), timeout=60)
    assert response.status_code == 200, response.text
    target.job_uuids.append("fuzz-local-job")
    cancel_every_job(target)


def local_sft(model: str) -> dict[str, Any]:
    return {
        "job_uuid": "fuzz-local-job",
        "model": model,
        "dataset": "fuzz-data",
        "validation_dataset": "fuzz-data",
        "algorithm": "lora",
        "algorithm_config": {
            "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": False,
            "apply_lora_to_output": False,
            "rank": 4,
            "alpha": 8,
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 1e-5, "weight_decay": 0.0},
        "training_config": training_config(batch_size=1),
        "hyperparam_search_config": {},
        "logger_config": {},
    }


def cancel_every_job(target: Target) -> None:
    for job in httpx.get(f"{target.url}/post_training/jobs", timeout=60).json():
        if job["status"] in ("scheduled", "running"):
            response = httpx.post(
                f"{target.url}/post_training/job/cancel", json={"job_uuid": job["job_uuid"]}, timeout=120
            )
            assert response.status_code == 200, response.text


def start_training_job(target: Target) -> None:
    """A LoRA fine-tuning job on the fake, so that the job routes have one to read and cancel."""
    rows = [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "Paris."}]}]
    dataset = inline_dataset(jsonl(rows), {"messages": "dialog"})
    request = {
        "job_uuid": "fuzz-job",
        "model": LLAMA_8B,
        "dataset": dataset,
        "validation_dataset": dataset,
        "algorithm": "lora",
        "algorithm_config": {
            "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": True,
            "apply_lora_to_output": False,
            "rank": 8,
            "alpha": 16,
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 1e-5, "weight_decay": 0.01},
        "training_config": training_config(batch_size=8),
    }
    response = httpx.post(f"{target.url}/post_training/supervised_fine_tune/", json=request, timeout=60)
    assert response.status_code == 200, response.text
    target.job_uuids.append(response.json()["job_uuid"])


def judge_with_any_model(body: dict[str, Any]) -> dict[str, Any] | None:
    """The fake's judge answer for a judge prompt sent to any model (the fake judges only with models named
    "judge"; reward scoring takes any served model as its judge, and Together's real models answer a score)."""
    prompts = [m.get("content") for m in body.get("messages", []) if isinstance(m, dict)]
    if not any(isinstance(prompt, str) and "<response>" in prompt for prompt in prompts):
        return None
    answer = together_tools._judge(body | {"model": "judge"})
    return None if answer is None else answer | {"model": body["model"]}


@pytest.fixture(scope="module")
def fake_together() -> Iterator[FakeVendor]:
    fake = make_together_fake()
    fake.state["chat_responders"].insert(0, judge_with_any_model)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def together_server(fake_together: FakeVendor, request: pytest.FixtureRequest) -> Iterator[Target]:
    with summarized(request, TARGETS["together"]), tempfile.TemporaryDirectory(prefix="llama-stack-fuzz-") as storage:
        env = {
            **os.environ,
            "TOGETHER_URL": fake_together.url,
            "TOGETHER_API_KEY": TOGETHER_KEY,
            "LLAMA_STACK_STORAGE": storage,
        }
        with serving("together", env=env, log=Path(storage) / "server.log") as served:
            # Together runs llama_guard shields only (the others are a documented 501).
            target = ready(TARGETS["together"], served.url, shield_types=("llama_guard",))
            start_training_job(target)
            yield target


# ------------------------------------------------------------------------------------------------------- runs

# Served by the together and local servers, not by the replay one (a few examples there: 404s).
ELSEWHERE = [
    "datasets",
    "safety",
    "post_training",
    "reward_scoring",
    "synthetic_data_generation",
    "tool_runtime",
    "agentic_system",
]
TOGETHER_ONLY = ["post_training", "reward_scoring"]

replay = schema_for(TARGETS["replay"], fewer_examples(ELSEWHERE))
together = schema_for(TARGETS["together"], []).include(
    tag=[*TOGETHER_ONLY, "safety", "tool_runtime", "agentic_system", "inference", "openai"]
)
local = schema_for(TARGETS["local"], []).include(
    tag=[
        "inference",
        "openai",
        "memory_banks",
        "inspect",
        "safety",
        "tool_runtime",
        "agentic_system",
        "datasets",
        "post_training",
        "reward_scoring",
        "synthetic_data_generation",
    ]
)


def test_the_served_document_is_the_one_fuzzed(replay_server: Target) -> None:
    assert httpx.get(f"{replay_server.url}/openapi.json", timeout=30).json() == DOCUMENT


@replay.parametrize()
def test_replay(case: schemathesis.Case, replay_server: Target) -> None:
    call(case, replay_server)


@pytest.mark.slow
@together.parametrize()
def test_together(case: schemathesis.Case, together_server: Target) -> None:
    call(case, together_server)


@pytest.mark.slow
def test_together_got_only_requests_its_spec_allows(together_server: Target, fake_together: FakeVendor) -> None:
    assert fake_together.requests, "no fuzzed request reached the fake Together"
    assert not fake_together.violations, "requests to Together broke its spec:\n" + "\n".join(fake_together.violations)


@pytest.mark.slow
@local.parametrize()
def test_local(case: schemathesis.Case, local_fuzz_server: Target) -> None:
    call(case, local_fuzz_server)
