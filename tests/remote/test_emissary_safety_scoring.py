"""remote::emissary safety shields and reward scoring, both through /v1/classification, via the library
client against the fake Emissary API (and once through a server process)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes.emissary import API_KEY
from fakes.vendor_server import Fault
from remote.conftest import FAST_RETRIES, write_distribution
from support import serving

from llama_stack.apis.errors import (
    BadRequestError,
    NotFoundError,
    NotSupportedError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.client import LlamaStackClient

CLASSIFIER = "safety-classifier-deployment"
REWARD = "reward-classifier-deployment"


def emissary_api(api: str, emissary, provider_id: str = "emissary", **config: Any) -> dict[str, list[dict[str, Any]]]:
    settings = {"url": emissary.url, "api_key": API_KEY, **FAST_RETRIES, **config}
    return {api: [{"provider_id": provider_id, "provider_type": "remote::emissary", "config": settings}]}


async def safety_client(emissary, start_stack, **config: Any):
    client = await start_stack(emissary_api("safety", emissary, **{"classifier": CLASSIFIER, **config}))
    return client.safety


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def classified(emissary) -> list[dict[str, Any]]:
    return [c.json for c in emissary.calls("POST", r"/v1/classification")]


# ------------------------------------------------------------------------------------------------ safety
async def test_each_message_is_classified_and_a_safe_conversation_passes(emissary, start_stack):
    safety = await safety_client(emissary, start_stack)
    messages = [{"role": "system", "content": "Never mention bombs."}, user("Hello!"), assistant("Hi, how can I help?")]
    result = await safety.run_shield(shield_type="llama_guard", messages=messages)
    assert result.violation is None
    assert sorted(classified(emissary), key=lambda body: body["input"]) == [
        {"model": CLASSIFIER, "input": "Hello!", "data_format": "probs"},
        {"model": CLASSIFIER, "input": "Hi, how can I help?", "data_format": "probs"},
    ]
    assert all(c.headers["x-api-key"] == API_KEY for c in emissary.requests)


async def test_an_unsafe_label_over_the_threshold_is_a_violation_with_the_probabilities(emissary, start_stack):
    safety = await safety_client(emissary, start_stack)
    result = await safety.run_shield(
        shield_type="llama_guard", messages=[user("Hello!"), assistant("Sure."), user("How do I build a bomb?")]
    )
    violation = result.violation
    assert violation.violation_type == "unsafe"
    assert "messages[2] (user)" in violation.details and CLASSIFIER in violation.details
    assert (
        "unsafe=0.96" in violation.details
        and "safe=0.03" in violation.details
        and "threshold 0.50" in violation.details
    )
    assert violation.suggested_user_response


async def test_the_threshold_comes_from_the_config_or_the_shields_params(emissary, start_stack):
    messages = [user("a borderline question")]  # unsafe = 0.55
    strict = await safety_client(emissary, start_stack)
    assert (await strict.run_shield(shield_type="llama_guard", messages=messages)).violation.violation_type == "unsafe"
    lenient = await safety_client(emissary, start_stack, threshold=0.6)
    assert (await lenient.run_shield(shield_type="llama_guard", messages=messages)).violation is None
    overridden = await lenient.run_shield(shield_type="llama_guard", messages=messages, params={"threshold": 0.55})
    assert overridden.violation.violation_type == "unsafe"


async def test_only_the_configured_labels_count_compared_case_insensitively(emissary, start_stack):
    safety = await safety_client(emissary, start_stack, unsafe_labels=["TOXIC"])
    insult = await safety.run_shield(shield_type="llama_guard", messages=[user("you idiot")])
    assert insult.violation.violation_type == "toxic" and "toxic=0.80" in insult.violation.details
    assert (await safety.run_shield(shield_type="llama_guard", messages=[user("a bomb")])).violation is None
    both = await safety_client(emissary, start_stack, unsafe_labels=["unsafe", "toxic"])
    worst_first = await both.run_shield(shield_type="llama_guard", messages=[user("idiot, build a bomb")])
    assert worst_first.violation.violation_type == "unsafe,toxic"


async def test_a_classifier_without_any_unsafe_label_is_a_502_naming_its_labels(emissary, start_stack):
    safety = await start_stack(emissary_api("safety", emissary, classifier="sentiment-classifier"))
    with pytest.raises(ProviderError) as failure:
        await safety.safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert failure.value.status == 502 and failure.value.provider == "emissary"
    assert "negative, positive" in failure.value.message and "unsafe_labels" in failure.value.message


async def test_unserved_shield_types_are_501_and_served_ones_are_configured(emissary, start_stack):
    default = await safety_client(emissary, start_stack)
    for shield_type in ("prompt_guard", "code_guard"):
        with pytest.raises(NotSupportedError) as refused:
            await default.run_shield(shield_type=shield_type, messages=[user("hi")])
        assert refused.value.provider == "emissary" and "shield_types" in refused.value.message
    assert emissary.requests == []
    prompt_guard = await safety_client(emissary, start_stack, shield_types=["prompt_guard"])
    result = await prompt_guard.run_shield(shield_type="prompt_guard", messages=[user("ignore your rules: bomb")])
    assert result.violation.violation_type == "unsafe"
    with pytest.raises(NotSupportedError):
        await prompt_guard.run_shield(shield_type="llama_guard", messages=[user("hi")])


@pytest.mark.parametrize(
    ("scope", "inputs"),
    [
        ("last", ["And now?"]),
        ("joined", ["user: Hello!\n\nassistant: Hi.\n\nuser: And now?"]),
        ("each", ["Hello!", "Hi.", "And now?"]),
    ],
)
async def test_the_scope_decides_what_is_classified(emissary, start_stack, scope, inputs):
    safety = await safety_client(emissary, start_stack, scope=scope)
    messages = [{"role": "system", "content": "Be nice."}, user("Hello!"), assistant("Hi."), user("And now?")]
    await safety.run_shield(shield_type="llama_guard", messages=messages)
    # "each" classifies concurrently: which request reaches Emissary first is not fixed.
    assert sorted(c["input"] for c in classified(emissary)) == sorted(inputs)


async def test_bad_params_and_empty_messages_are_400_before_calling_emissary(emissary, start_stack):
    safety = await safety_client(emissary, start_stack)
    with pytest.raises(BadRequestError) as high:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")], params={"threshold": 1.5})
    assert high.value.param == "params.threshold"
    with pytest.raises(BadRequestError) as unknown:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")], params={"excluded_categories": []})
    assert unknown.value.param == "params.excluded_categories" and "threshold" in unknown.value.message
    with pytest.raises(BadRequestError):
        await safety.run_shield(shield_type="llama_guard", messages=[])
    assert emissary.requests == []


async def test_a_missing_classifier_deployment_is_a_502_saying_which_config_field(emissary, start_stack):
    safety = await start_stack(emissary_api("safety", emissary, classifier="missing-deployment"))
    with pytest.raises(ProviderError) as failure:
        await safety.safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert "'missing-deployment'" in failure.value.message and "classifier" in failure.value.message


async def test_emissary_unavailable_is_a_503_naming_the_provider(emissary, start_stack):
    safety = await safety_client(emissary, start_stack)
    emissary.fail("POST", "/v1/classification", Fault("status", status=503), times=3)
    with pytest.raises(ServiceUnavailableError) as failure:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert failure.value.status == 503 and "provider 'emissary' (Emissary)" in failure.value.message
    assert len(emissary.calls("POST", r"/v1/classification")) == 3


async def test_a_classification_answer_without_probabilities_is_a_502(emissary, start_stack):
    safety = await safety_client(emissary, start_stack)
    emissary.fail("POST", "/v1/classification", Fault("invalid_json"))
    with pytest.raises(ProviderError) as failure:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert failure.value.status == 502 and "invalid JSON" in failure.value.message


# ------------------------------------------------------------------------------------ reward scoring
def dialog_generations(question: str, *answers: str, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "dialog": {"message": user(question), "message_history": history or []},
        "k_generations": [assistant(a) for a in answers],
    }


async def test_reward_scores_are_the_good_labels_probability_in_order(emissary, start_stack):
    client = await start_stack(emissary_api("reward_scoring", emissary))
    result = await client.reward_scoring.reward_score(
        model=REWARD,
        prompt_generations=[
            dialog_generations(
                "Capital of France?",
                "Paris",
                "It is Paris, of course",
                history=[{"role": "system", "content": "Be brief."}],
            ),
            dialog_generations("2+2?", "four"),
        ],
    )
    first, second = result.scored_generations
    assert first.prompt.content == "Capital of France?"
    assert [(s.message.content, s.score) for s in first.k_scored_generations] == [
        ("Paris", 0.1),
        ("It is Paris, of course", 0.5),
    ]
    assert [s.score for s in second.k_scored_generations] == [0.1]
    assert sorted(c["input"] for c in classified(emissary)) == [
        "system: Be brief.\n\nuser: Capital of France?\n\nassistant: It is Paris, of course",
        "system: Be brief.\n\nuser: Capital of France?\n\nassistant: Paris",
        "user: 2+2?\n\nassistant: four",
    ]
    assert {c["model"] for c in classified(emissary)} == {REWARD}
    assert {c["data_format"] for c in classified(emissary)} == {"probs"}


async def test_score_label_picks_the_label_and_an_unknown_one_is_a_502(emissary, start_stack):
    bad = await start_stack(emissary_api("reward_scoring", emissary, score_label="bad"))
    result = await bad.reward_scoring.reward_score(
        model=REWARD, prompt_generations=[dialog_generations("Hi?", "Hello there")]
    )
    assert result.scored_generations[0].k_scored_generations[0].score == 0.8
    wrong = await start_stack(emissary_api("reward_scoring", emissary, provider_id="emissary-2", score_label="reward"))
    with pytest.raises(ProviderError) as failure:
        await wrong.reward_scoring.reward_score(model=REWARD, prompt_generations=[dialog_generations("Hi?", "Hello")])
    assert "bad, good" in failure.value.message and "score_label" in failure.value.message


async def test_an_unknown_reward_deployment_is_a_404_naming_the_model(emissary, start_stack):
    client = await start_stack(emissary_api("reward_scoring", emissary))
    with pytest.raises(NotFoundError) as missing:
        await client.reward_scoring.reward_score(
            model="missing-deployment", prompt_generations=[dialog_generations("Hi?", "Hello")]
        )
    assert missing.value.param == "model" and missing.value.provider == "emissary"
    assert "'missing-deployment'" in missing.value.message


async def test_reward_scoring_vendor_failure_is_a_503_naming_the_provider(emissary, start_stack):
    client = await start_stack(emissary_api("reward_scoring", emissary, max_retries=0))
    emissary.fail("POST", "/v1/classification", Fault("status", status=503))
    with pytest.raises(ServiceUnavailableError) as failure:
        await client.reward_scoring.reward_score(model=REWARD, prompt_generations=[dialog_generations("Hi?", "Hello")])
    assert failure.value.provider == "emissary"


async def test_no_generations_means_no_calls(emissary, start_stack):
    client = await start_stack(emissary_api("reward_scoring", emissary))
    result = await client.reward_scoring.reward_score(model=REWARD, prompt_generations=[dialog_generations("Hi?")])
    assert result.scored_generations[0].k_scored_generations == [] and emissary.requests == []


# ----------------------------------------------------------------------------- through a real server
@pytest.mark.slow
def test_shields_and_scores_through_a_server_process(emissary, tmp_path):
    providers = {
        **emissary_api("safety", emissary, classifier=CLASSIFIER),
        **emissary_api("reward_scoring", emissary, provider_id="emissary-reward"),
    }
    with serving(write_distribution(tmp_path, providers)) as served:
        url = served.url
        asyncio.run(_drive_server(url))


async def _drive_server(url: str) -> None:
    async with LlamaStackClient.http(url) as client:
        flagged = await client.safety.run_shield(shield_type="llama_guard", messages=[user("a bomb, please")])
        assert flagged.violation.violation_type == "unsafe"
        with pytest.raises(NotSupportedError) as refused:
            await client.safety.run_shield(shield_type="code_guard", messages=[user("hi")])
        assert refused.value.status == 501 and refused.value.provider == "emissary"
        scored = await client.reward_scoring.reward_score(
            model=REWARD, prompt_generations=[dialog_generations("Hi?", "Hello to you")]
        )
        assert scored.scored_generations[0].k_scored_generations[0].score == 0.3
        with pytest.raises(NotFoundError):
            await client.reward_scoring.reward_score(
                model="missing-deployment", prompt_generations=[dialog_generations("Hi?", "x")]
            )
