"""Several providers for one API: each call reaches the provider serving what it names, and still does after a
restart. One distribution serves two safety providers (registered shields and a provider of its own types),
banks on faiss and on pgvector side by side, and two trainers (test-only providers where no real one exists yet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from memory_support import document, faiss_provider, pgvector_provider
from remote.training_support import inline_dataset, jsonl, training_config
from routing_providers import RoutingTestPlugin
from support import ReplayPlugin

from llama_stack.apis.common import MemoryBankDocument
from llama_stack.apis.errors import ConflictError, NotFoundError, NotSupportedError, ValidationError
from llama_stack.apis.registry import Api
from llama_stack.client import LlamaStackClient
from llama_stack.config import ConfigError
from llama_stack.plugins import discover_providers
from llama_stack.resolver import Stack

ROWS = [{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}]
EMBEDDER = {"embedding_model": "replay-embedder"}  # the replay provider's small embedder: no model to load


@pytest.fixture(scope="module")
def registry():
    return discover_providers(extra_plugins=[ReplayPlugin(), RoutingTestPlugin()])


def distribution(directory: Path, postgres_uri: str, **changes: Any) -> Path:
    document_ = {
        "apis": ["inference", "memory_banks", "safety", "post_training"],
        "providers": {
            "inference": [{"provider_id": "replay", "provider_type": "inline::replay", "config": {}}],
            "memory_banks": [faiss_provider(**EMBEDDER), pgvector_provider(postgres_uri, **EMBEDDER)],
            "safety": [
                {
                    "provider_id": "local-guard",
                    "provider_type": "inline::word-shield",
                    "config": {"word": "bomb", "shield_types": ["llama_guard"]},
                },
                {
                    "provider_id": "hosted-guard",
                    "provider_type": "inline::word-shield",
                    "config": {"word": "bomb", "shield_types": ["llama_guard", "prompt_guard"]},
                },
            ],
            "post_training": [
                {"provider_id": "trainer-a", "provider_type": "inline::test-trainer", "config": {}},
                {"provider_id": "trainer-b", "provider_type": "inline::test-trainer", "config": {}},
            ],
        },
        "models": [
            {"model_id": "replay-model", "provider_id": "replay"},
            {"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"},
            {"model_id": "tiny-base", "provider_id": "trainer-b"},
        ],
        "shields": [
            {"shield_id": "strict", "provider_id": "local-guard", "shield_type": "llama_guard", "params": {"level": 2}},
            {"shield_id": "hosted", "provider_id": "hosted-guard", "shield_type": "llama_guard"},
        ],
        "storage": {"dir": str(directory / "state")},
        **changes,
    }
    path = directory / "routing.yaml"
    path.write_text(yaml.safe_dump(document_, sort_keys=False))
    return path


async def start(path: Path, registry: Any) -> LlamaStackClient:
    return await LlamaStackClient.library(Stack.from_distribution(path, registry=registry))


def sft(job_uuid: str, **fields: Any) -> dict[str, Any]:
    data = inline_dataset(jsonl(ROWS), {"messages": "dialog"})
    return {
        "job_uuid": job_uuid,
        "model": "some-base",
        "dataset": data,
        "validation_dataset": data,
        "algorithm": "lora",
        "algorithm_config": {
            "lora_attn_modules": ["q_proj"],
            "apply_lora_to_mlp": False,
            "apply_lora_to_output": False,
            "rank": 4,
            "alpha": 8,
        },
        "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-4, "lr_min": 1e-5, "weight_decay": 0.0},
        "training_config": training_config(batch_size=1),
        **fields,
    }


def said(messages: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": messages}]


async def shield_answer(client: LlamaStackClient, **request: Any) -> Any:
    answer = await client.safety.run_shield(request={"messages": said("a bomb"), **request})
    return answer.violation


async def test_every_call_reaches_the_provider_serving_what_it_names_and_still_does_after_a_restart(
    tmp_path, postgres_uri, registry
):
    path = distribution(tmp_path, postgres_uri)
    client = await start(path, registry)
    try:
        # Safety: a registered shield by id (its params under the request's), else the first of the type.
        strict = await shield_answer(client, shield_type="llama_guard", shield_id="strict", params={"x": 1})
        assert strict.details == "local-guard"
        assert json.loads(strict.suggested_user_response) == {"params": {"level": 2, "x": 1}, "shield_id": "strict"}
        hosted = await shield_answer(client, shield_type="llama_guard", shield_id="hosted")
        assert hosted.details == "hosted-guard"
        assert (await shield_answer(client, shield_type="llama_guard")).details == "local-guard"

        # Banks: the first provider unless the request names one; each bank's calls go to its store.
        await client.memory_banks.register_memory_bank(
            request={"bank_uuid": "on-faiss", "bank_name": "faiss bank", "config": EMBEDDER}
        )
        await client.memory_banks.register_memory_bank(
            request={"bank_uuid": "on-pg", "bank_name": "pg bank", "config": EMBEDDER, "provider_id": "pgvector"}
        )
        await client.memory_banks.insert_memory_documents(
            bank_uuid="on-faiss", documents=[document("f1", "llamas live in the Andes")]
        )
        await client.memory_banks.insert_memory_documents(
            bank_uuid="on-pg", documents=[document("p1", "postgres keeps rows in pages")]
        )

        # Jobs: the provider a request names, else the one serving its model, else the first.
        await client.post_training.supervised_fine_tune(**sft("named", provider_id="trainer-b"))
        await client.post_training.supervised_fine_tune(**sft("by-model", model="tiny-base"))
        await client.post_training.supervised_fine_tune(**sft("default"))
    finally:
        await client.aclose()

    client = await start(path, registry)
    try:
        stack = client.transport.stack
        faiss_banks = {b.uuid for b in await stack.providers["faiss"].impl.list_memory_banks()}
        pg_banks = {b.uuid for b in await stack.providers["pgvector"].impl.list_memory_banks()}
        assert (faiss_banks, pg_banks) == ({"on-faiss"}, {"on-pg"})
        assert {b.uuid for b in await client.memory_banks.list_memory_banks()} == {"on-faiss", "on-pg"}
        for bank, only in (("on-faiss", "f1"), ("on-pg", "p1")):
            hits = await client.memory_banks.query_memory_bank(bank_uuid=bank, request={"query": "where", "k": 5})
            assert {c.document_uuid for c in hits.chunks} == {only}
        (kept,) = await client.memory_banks.get_memory_documents(bank_uuid="on-pg", document_uuids=["p1"])
        assert kept.uuid == "p1"

        trained_by = {}
        for job in ("named", "by-model", "default"):
            logs = await client.post_training.get_training_job_logs(job_uuid=job)
            trained_by[job] = logs.log_lines[0]
        assert trained_by == {
            "named": "trained by trainer-b",
            "by-model": "trained by trainer-b",
            "default": "trained by trainer-a",
        }
        cancelled = await client.post_training.cancel_training_job(request={"job_uuid": "named"})
        assert cancelled.resources_allocated == {"provider": "trainer-b"}
        listed = {j.job_uuid: j.status.value for j in await client.post_training.list_training_jobs()}
        assert listed == {"named": "failed", "by-model": "running", "default": "running"}

        # A dropped bank is forgotten: naming it again is a 404 that lists the banks there are.
        await client.memory_banks.drop_memory_bank(bank_uuid="on-faiss")
        with pytest.raises(NotFoundError) as missing:
            await client.memory_banks.query_memory_bank(bank_uuid="on-faiss", request={"query": "x"})
        assert missing.value.message == "No bank 'on-faiss' (known: on-pg)"
    finally:
        await client.aclose()


async def test_what_a_call_names_but_nothing_serves_is_a_404_listing_what_exists(tmp_path, postgres_uri, registry):
    client = await start(distribution(tmp_path, postgres_uri), registry)
    try:
        with pytest.raises(NotFoundError) as no_provider:
            await client.memory_banks.register_memory_bank(
                request={"bank_uuid": "b", "bank_name": "b", "provider_id": "chroma"}
            )
        assert no_provider.value.status == 404
        assert no_provider.value.message == "No memory_banks provider 'chroma' (providers: faiss, pgvector)"

        with pytest.raises(NotFoundError) as no_job:
            await client.post_training.get_training_job_status(job_uuid="never-started")
        assert no_job.value.message == "No job 'never-started' (known: none)"

        with pytest.raises(NotFoundError) as no_shield:
            await shield_answer(client, shield_type="llama_guard", shield_id="lenient")
        assert no_shield.value.message == (
            "No shield 'lenient' is registered (registered shields: strict (llama_guard), hosted (llama_guard))"
        )
        # prompt_guard has no registered shield: the first provider that serves the type runs it.
        assert (await shield_answer(client, shield_type="prompt_guard")).details == "hosted-guard"
        with pytest.raises(NotFoundError) as no_type:
            await shield_answer(client, shield_type="code_guard")
        assert no_type.value.message.startswith("No shield of type code_guard is served")

        await client.memory_banks.register_memory_bank(request={"bank_uuid": "taken", "bank_name": "t"})
        with pytest.raises(ConflictError) as taken:
            await client.memory_banks.register_memory_bank(
                request={"bank_uuid": "taken", "bank_name": "t", "provider_id": "pgvector"}
            )
        assert taken.value.message == "The bank 'taken' already exists on provider 'faiss'"
    finally:
        await client.aclose()


async def test_banks_made_before_owners_were_recorded_are_found_by_asking_each_provider(
    tmp_path, postgres_uri, registry
):
    path = distribution(tmp_path, postgres_uri)
    client = await start(path, registry)
    try:
        pgvector = client.transport.stack.providers["pgvector"].impl
        # Straight to the provider, as a stack of an earlier version would have: no owner is written down.
        old = MemoryBankDocument.model_validate(document("o", "old"))
        await pgvector.create_memory_bank(bank_uuid="older", bank_name="older", documents=[old])
        (found,) = await client.memory_banks.get_memory_documents(bank_uuid="older", document_uuids=["o"])
        assert found.uuid == "o"
    finally:
        await client.aclose()


async def test_a_provider_missing_a_required_method_fails_the_start_naming_its_package(
    tmp_path, postgres_uri, registry
):
    path = distribution(tmp_path, postgres_uri)
    text = path.read_text().replace(
        "provider_id: trainer-b\n    provider_type: inline::test-trainer",
        "provider_id: trainer-b\n    provider_type: inline::trainer-without-logs",
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        await start(path, registry)
    assert str(error.value).endswith(
        "provider 'trainer-b' (inline::trainer-without-logs, from package RoutingTestPlugin) does not implement "
        "post_training.get_training_job_logs, which the post_training API requires"
    )


async def test_a_missing_optional_method_is_a_501_naming_the_provider(tmp_path, postgres_uri, registry):
    client = await start(distribution(tmp_path, postgres_uri), registry)
    try:
        replay = client.transport.stack.providers["replay"]
        object.__setattr__(replay.impl, "batch_completion", None)  # as a provider without batches
        with pytest.raises(NotSupportedError) as error:
            await client.inference.batch_completion(model="replay-model", content_batch=["a"])
        assert error.value.status == 501 and error.value.provider == "replay"
        assert error.value.message == "Provider 'replay' (ReplayPlugin) does not implement inference.batch_completion"
    finally:
        await client.aclose()


@pytest.mark.parametrize("served", [["inference"], ["inference", "safety"]])
async def test_an_optional_dependency_is_handed_over_only_when_the_distribution_serves_it(tmp_path, registry, served):
    providers: dict[str, Any] = {
        "inference": [{"provider_id": "replay", "provider_type": "inline::replay", "config": {}}],
        "synthetic_data_generation": [{"provider_id": "gen", "provider_type": "inline::dependent", "config": {}}],
    }
    if "safety" in served:
        providers["safety"] = [{"provider_id": "guard", "provider_type": "inline::word-shield", "config": {}}]
    path = tmp_path / "dependent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apis": [*served, "synthetic_data_generation"],
                "providers": providers,
                "storage": {"dir": str(tmp_path / "state")},
            }
        )
    )
    client = await start(path, registry)
    try:
        dependent = client.transport.stack.providers["gen"].impl
        assert set(dependent.deps) == {Api(name) for name in served}
    finally:
        await client.aclose()


async def test_a_provider_id_or_shield_id_longer_than_any_name_is_refused_before_routing(
    tmp_path, postgres_uri, registry
):
    client = await start(distribution(tmp_path, postgres_uri), registry)
    try:
        with pytest.raises(ValidationError) as long_provider:
            await client.memory_banks.create_memory_bank(
                bank_uuid="b", bank_name="b", documents=[], provider_id="p" * 257
            )
        assert long_provider.value.details[0]["loc"] == "provider_id"
        with pytest.raises(ValidationError) as long_shield:
            await shield_answer(client, shield_type="llama_guard", shield_id="s" * 257)
        assert long_shield.value.details[0]["loc"] == "shield_id"  # within the request body
        assert "at most 256 characters" in long_shield.value.details[0]["message"]
    finally:
        await client.aclose()
