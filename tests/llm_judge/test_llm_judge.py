"""inline::llm-judge through the stack (POST /reward_scoring/score over HTTP) with judges served by a replaying
inference provider whose logprobs are fixed per judge prompt: exact scores, routing, order, batching, bounds and
failures. The real SmolLM2 judge is in test_llm_judge_smollm2.py."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from llm_judge.judge_support import JudgeReplay, JudgeReplayPlugin

from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inspect import Model
from llama_stack.apis.reward_scoring import MAX_GENERATIONS
from llama_stack.plugins import discover_providers
from llama_stack.providers.inline.llm_judge.answers import UnreadableAnswer, rating_score, yes_no_score
from llama_stack.providers.inline.llm_judge.config import (
    DEFAULT_RATING_PROMPT,
    DEFAULT_RATING_SYSTEM_PROMPT,
    DEFAULT_YES_NO_PROMPT,
    DEFAULT_YES_NO_SYSTEM_PROMPT,
    LLMJudgeConfig,
)
from llama_stack.resolver import Stack
from llama_stack.server import create_app

REPO = Path(__file__).resolve().parents[2]

# The replayed answers: the first rule whose `when` is in the judge prompt answers. Probabilities, most likely first.
YES_NO_RULES = [
    # "Yes" 0.5, " yes" 0.1, "YES" 0.05 count as yes (0.65); "No" 0.2, "\nno" 0.05 as no (0.25); "Maybe" neither.
    {
        "when": "Paris",
        "first": [["Yes", 0.5], ["No", 0.2], [" yes", 0.1], ["Maybe", 0.1], ["YES", 0.05], ["\nno", 0.05]],
    },
    {"when": "Berlin", "first": [["No", 0.6], ["Yes", 0.3], ["The", 0.1]]},
    {"when": "Lyon", "first": [["No", 0.9], ["▁yes", 0.1]]},  # a SentencePiece space marker
    {"when": "Madrid", "first": [["I", 0.7], ["The", 0.2], ["Sorry", 0.1]]},  # neither word
    {"when": "no logprobs", "first": [["Yes", 1.0]], "no_logprobs": True},
    {"when": "busy", "fail": 503},
    {"when": "too long", "fail": 400, "param": "batch_dialogs[1]"},
    {"when": "overlong", "fail": 400},  # as llama.cpp refuses a prompt past its context: no param
    {"when": "crash", "fail": "crash"},
    {"first": [["Yes", 0.25], ["No", 0.75]]},
]
RATING_RULES = [
    # 10 is a token of its own: every rating reads from the first token; "1" is 1.
    {"when": "one-token ten", "first": [["8", 0.5], ["10", 0.2], ["7", 0.2], ["1", 0.1]]},
    # Digits split and the judge began with "1": after it, "0" (0.75) makes 10, "5" (0.05) makes 15 (left out),
    # the rest (0.2) ends the number at 1.
    {
        "when": "split ten",
        "first": [["1", 0.6], ["9", 0.3], ["The", 0.1]],
        "second": [["0", 0.75], [".", 0.2], ["5", 0.05]],
    },
    # Digits split and the judge began with "9": what follows a "1" is unknown, so "1" is left out.
    {"when": "began with nine", "first": [["9", 0.5], [" 1", 0.3], ["8", 0.2]], "second": [["/", 0.9], ["0", 0.1]]},
    {"when": "only one", "first": [["The", 0.9], ["1", 0.1]], "second": [["0", 1.0]]},
    {"when": "no number", "first": [["Great", 0.9], ["Good", 0.1]]},
    {"first": [["5", 1.0]]},
]


def distribution(directory: Path) -> Path:
    reward = [
        {"provider_id": "judges", "provider_type": "inline::llm-judge", "config": {"batch_size": 2}},
        {
            "provider_id": "one-by-one",
            "provider_type": "inline::llm-judge",
            "config": {"max_concurrency": 3, "max_pairs": 12, "max_request_chars": 5_000},
        },
    ]
    models = [
        {
            "model_id": "replay-llm",
            "provider_id": "replay",
            "aliases": ["replay-alias"],
            "metadata": {"rules": YES_NO_RULES},
        },
        {"model_id": "replay-rater", "provider_id": "replay", "metadata": {"rules": RATING_RULES}},
        {"model_id": "plain-llm", "provider_id": "plain", "metadata": {"rules": YES_NO_RULES}},
        {"model_id": "yes-no", "provider_id": "judges", "provider_model_id": "replay-alias", "model_type": "reward"},
        {
            "model_id": "rater",
            "provider_id": "judges",
            "provider_model_id": "replay-rater",
            "model_type": "reward",
            "system_prompt": "",
            "metadata": {"mode": "rating", "description": "rates 1-10"},
        },
        {
            "model_id": "custom",
            "provider_id": "judges",
            "provider_model_id": "replay-llm",
            "model_type": "reward",
            "system_prompt": "Be strict.",
            "metadata": {"prompt": "Q {{and}} A:\n{conversation}\n=> {response}\nGood?"},
        },
        {
            "model_id": "unbatched",
            "provider_id": "one-by-one",
            "provider_model_id": "plain-llm",
            "model_type": "reward",
        },
    ]
    document = {
        "apis": ["inference", "reward_scoring"],
        "providers": {
            "inference": [
                {"provider_id": "replay", "provider_type": "inline::judge-replay", "config": {}},
                {"provider_id": "plain", "provider_type": "inline::judge-replay", "config": {"batch": False}},
            ],
            "reward_scoring": reward,
        },
        "models": models,
        "storage": {"dir": str(directory / "state")},
    }
    path = directory / "judges.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def registry():
    return discover_providers(extra_plugins=[JudgeReplayPlugin()])


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, registry):
    stack = Stack.from_distribution(distribution(tmp_path_factory.mktemp("judges")), registry=registry)
    await stack.start()
    yield stack
    await stack.shutdown()


@asynccontextmanager
async def asgi_client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(stack), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture(scope="module")
async def http(stack):
    async with asgi_client(stack) as client:
        yield client


@pytest.fixture
def replay(stack) -> JudgeReplay:
    model: JudgeReplay = stack.providers["replay"].impl
    model.reset()
    return model


@pytest.fixture
def plain(stack) -> JudgeReplay:
    model: JudgeReplay = stack.providers["plain"].impl
    model.reset()
    return model


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def answer(text: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def item(question: str, *answers: str, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    dialog: dict[str, Any] = {"message": user(question)}
    if history:
        dialog["message_history"] = history
    return {"dialog": dialog, "k_generations": [answer(a) for a in answers]}


async def score(http: httpx.AsyncClient, model: str, *items: dict[str, Any]) -> httpx.Response:
    return await http.post("/reward_scoring/score", json={"model": model, "prompt_generations": list(items)})


async def scores(http: httpx.AsyncClient, model: str, *items: dict[str, Any]) -> list[list[float]]:
    response = await score(http, model, *items)
    assert response.status_code == 200, response.text
    return [[g["score"] for g in p["k_scored_generations"]] for p in response.json()["scored_generations"]]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


# ------------------------------------------------------------------------------------------------ yes_no


async def test_yes_no_scores_are_p_yes_over_yes_and_no_counting_spaces_capitals_and_markers(http):
    got = await scores(http, "yes-no", item("What is the capital of France?", "Paris.", "Berlin.", "Lyon.", "Nice."))
    assert got == [[pytest.approx(0.65 / 0.9), pytest.approx(0.3 / 0.9), pytest.approx(0.1), pytest.approx(0.25)]]


async def test_the_judge_gets_its_prompt_greedy_for_one_token_with_the_top_20_logprobs(http, replay):
    history = [{"role": "system", "content": "Answer briefly."}]
    await scores(http, "yes-no", item("What is the capital of France?", "Paris.", history=history))
    ((kind, [dialog]),) = replay.calls
    assert kind == "batch"
    (request,) = replay.requests
    assert request.model == "replay-llm"  # the alias in provider_model_id, as the router resolves it
    assert (request.max_tokens, request.logprobs, request.top_logprobs) == (1, True, 20)
    assert request.sampling_params.strategy == "greedy"
    assert [m.model_dump(exclude_defaults=True) for m in dialog.message_history] == [
        {"role": "system", "content": DEFAULT_YES_NO_SYSTEM_PROMPT}
    ]
    conversation = "system: Answer briefly.\n\nuser: What is the capital of France?"
    assert dialog.message.content == DEFAULT_YES_NO_PROMPT.format(conversation=conversation, response="Paris.")


async def test_an_entrys_own_prompt_and_system_prompt_replace_the_defaults(http, replay):
    await scores(http, "custom", item("Capital of France?", "Paris."))
    dialog = replay.calls[0][1][0]
    assert dialog.message_history[0].content == "Be strict."
    assert dialog.message.content == "Q {and} A:\nuser: Capital of France?\n=> Paris.\nGood?"


async def test_tool_calls_and_text_attachments_are_judged_as_text(http, replay):
    data = "data:text/plain;base64,UGFyaXMgaXMgdGhlIGNhcGl0YWwu"  # "Paris is the capital."
    generation = {
        "role": "assistant",
        "content": ["See:", {"url": data, "mime_type": "text/plain"}],
        "tool_calls": [{"tool_name": "lookup", "arguments": {"q": "France"}}],
    }
    response = await score(http, "yes-no", {"dialog": {"message": user("Capital?")}, "k_generations": [generation]})
    assert response.status_code == 200, response.text
    prompt = replay.calls[0][1][0].message.content
    assert "Paris is the capital." in prompt and '[calls tool lookup with {"q": "France"}]' in prompt


async def test_an_image_attachment_is_a_400_naming_its_field_before_any_judge_call(http, replay):
    image = {"url": "data:image/png;base64,iVBORw0KGgo=", "mime_type": "image/png"}
    response = await score(
        http, "yes-no", item("Capital?", "Paris."), item("Draw it", "x") | {"k_generations": [answer(image)]}
    )
    error = error_of(response, 400)
    assert error["param"] == "prompt_generations[1].k_generations[0].content"
    assert replay.calls == []


async def test_no_answer_word_among_the_alternatives_is_a_502_naming_the_judge_and_what_it_said(http):
    error = error_of(await score(http, "yes-no", item("Capital of Spain?", "Paris.", "Madrid.")), 502)
    assert error["provider"] == "judges" and error["code"] == "unreadable_judgement"
    message = error["message"]
    assert "judge 'yes-no' (inference model 'replay-llm', mode yes_no)" in message
    assert "prompt_generations[0].k_generations[1]" in message and "neither 'yes' nor 'no'" in message
    assert "first token 'I' (top alternatives: 'I' 0.70, 'The' 0.20, 'Sorry' 0.10)" in message


async def test_a_judge_served_without_logprobs_is_a_502_saying_so(http):
    error = error_of(await score(http, "yes-no", item("Anything", "no logprobs")), 502)
    assert error["code"] == "judge_without_logprobs" and "without logprobs" in error["message"]


# ------------------------------------------------------------------------------------------------ rating


async def test_rating_scores_are_the_expected_rating_over_the_rating_tokens(http, replay):
    got = await scores(
        http,
        "rater",
        item("Rate", "one-token ten", "split ten", "began with nine", "anything else"),
    )
    one_token = (8 * 0.5 + 10 * 0.2 + 7 * 0.2 + 1 * 0.1) / 1.0
    split = (10 * 0.6 * 0.75 + 1 * 0.6 * 0.2 + 9 * 0.3) / (0.6 * 0.75 + 0.6 * 0.2 + 0.3)
    nine = (9 * 0.5 + 8 * 0.2) / 0.7
    assert got == [[pytest.approx(one_token), pytest.approx(split), pytest.approx(nine), 5.0]]
    request = replay.requests[0]
    assert (request.max_tokens, request.top_logprobs) == (2, 20)
    dialog = replay.calls[0][1][0]
    assert dialog.message_history == []  # system_prompt "" sends none
    assert dialog.message.content == DEFAULT_RATING_PROMPT.format(conversation="user: Rate", response="one-token ten")


@pytest.mark.parametrize("generation", ["only one", "no number"])
async def test_no_readable_rating_is_a_502(http, generation):
    error = error_of(await score(http, "rater", item("Rate", generation)), 502)
    assert "no rating from 1 to 10" in error["message"] and error["provider"] == "judges"


def test_reading_rules_directly():
    from llama_stack.apis.inference import TokenLogprob, TopLogprob

    def entry(*alternatives: tuple[str, float]) -> TokenLogprob:
        top = [TopLogprob(token=t, logprob=math.log(p)) for t, p in alternatives]
        return TokenLogprob(token=top[0].token, logprob=top[0].logprob, top_logprobs=top)

    # The generated token counts once whether or not the provider lists it among the alternatives.
    assert yes_no_score([entry(("Yes", 0.6), ("No", 0.2))]) == pytest.approx(0.75)
    alone = entry(("No", 0.2))
    alone = alone.model_copy(update={"token": "Yes", "logprob": math.log(0.6)})
    assert yes_no_score([alone]) == pytest.approx(0.75)
    # A judge that began with "1" and stopped: it said 1.
    assert rating_score([entry(("1", 0.5), ("9", 0.5))]) == pytest.approx(5.0)
    with pytest.raises(UnreadableAnswer):
        yes_no_score([entry(("yes.", 0.9), ("nope", 0.1))])


# ------------------------------------------------------------------------------- routing, order, batching


async def test_judges_are_routed_by_model_id_across_providers(http, replay, plain):
    pair = item("What is the capital of France?", "Paris.")
    assert await scores(http, "yes-no", pair) == [[pytest.approx(0.65 / 0.9)]]
    assert await scores(http, "unbatched", pair) == [[pytest.approx(0.65 / 0.9)]]
    assert await scores(http, "rater", item("Rate", "split ten")) != [[pytest.approx(0.65 / 0.9)]]
    assert {r.model for r in replay.requests} == {"replay-llm", "replay-rater"}
    assert [r.model for r in plain.requests] == ["plain-llm"]


async def test_an_unknown_judge_is_a_404_naming_the_judges(http, replay):
    error = error_of(await score(http, "nobody", item("Q", "A")), 404)
    assert "'nobody'" in error["message"]
    for judge in ("yes-no", "rater", "custom", "unbatched"):
        assert judge in error["message"]
    assert "replay-llm" not in error["message"]  # an llm is not a judge
    assert replay.calls == []


ANSWERS = ["Paris.", "Berlin.", "Lyon.", "Nice.", "Paris!"]
EXPECTED = {"Paris.": 0.65 / 0.9, "Paris!": 0.65 / 0.9, "Berlin.": 0.3 / 0.9, "Lyon.": 0.1, "Nice.": 0.25}


async def test_batches_of_batch_size_keep_the_request_order(http, replay):
    items = [item(f"Question {i}", *ANSWERS[i:], *ANSWERS[:i]) for i in range(3)]
    got = await scores(http, "yes-no", *items)
    assert got == [[pytest.approx(EXPECTED[a]) for a in [*ANSWERS[i:], *ANSWERS[:i]]] for i in range(3)]
    assert [kind for kind, _ in replay.calls] == ["batch"] * 8  # 15 pairs, batch_size 2
    sent = [d.message.content for _, dialogs in replay.calls for d in dialogs]
    assert len(sent) == 15 and all(f"Question {i}" in sent[5 * i + j] for i in range(3) for j in range(5))


async def test_without_batch_chat_completion_pairs_go_one_by_one_at_most_max_concurrency_at_once(http, plain):
    items = [item(f"Question {i}", *ANSWERS) for i in range(2)]
    got = await scores(http, "unbatched", *items)
    assert got == [[pytest.approx(EXPECTED[a]) for a in ANSWERS]] * 2
    assert [kind for kind, _ in plain.calls] == ["single"] * 10
    assert plain.max_in_flight == 3


async def test_an_empty_request_calls_no_judge(http, replay):
    response = await score(http, "yes-no")
    assert response.status_code == 200 and response.json()["scored_generations"] == []
    assert await scores(http, "yes-no", item("Q")) == [[]]
    assert replay.calls == []


# ------------------------------------------------------------------------------------ bounds and failures


async def test_more_pairs_than_max_pairs_is_a_400_before_any_judge_call(http, plain):
    error = error_of(await score(http, "unbatched", item("Q", *["a"] * 7), item("Q", *["b"] * 6)), 400)
    assert error["param"] == "prompt_generations" and "13 generations" in error["message"]
    assert "max_pairs" in error["message"] and plain.calls == []


async def test_judge_prompts_past_max_request_chars_are_a_400_before_any_judge_call(http, plain):
    error = error_of(await score(http, "unbatched", item("Q" * 3_000, "a", "b")), 400)
    assert error["param"] == "prompt_generations" and "max_request_chars" in error["message"]
    assert plain.calls == []


async def test_more_generations_than_the_api_allows_is_a_422_naming_the_field(http, replay):
    response = await score(http, "yes-no", item("Q", *["a"] * (MAX_GENERATIONS + 1)))
    error = error_of(response, 422)
    assert error["param"] == "prompt_generations[0].k_generations" and str(MAX_GENERATIONS) in error["message"]
    assert replay.calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt_generations": []}, "model"),
        (
            {"model": "yes-no", "prompt_generations": [{"dialog": {}, "k_generations": []}]},
            "prompt_generations[0].dialog.message",
        ),
        (
            {"model": "yes-no", "prompt_generations": [{"dialog": {"message": {"role": "judge", "content": "x"}}}]},
            "prompt_generations[0].dialog.message.role",
        ),
        ({"model": "yes-no", "prompt_generations": "all"}, "prompt_generations"),
    ],
)
async def test_malformed_requests_are_422s_naming_the_field(http, replay, body, param):
    error = error_of(await http.post("/reward_scoring/score", json=body), 422)
    assert error["param"] == param
    assert replay.calls == []


async def test_a_busy_judge_is_a_503_with_retry_after_naming_the_judge(http):
    response = await score(http, "yes-no", item("Q", "busy"))
    error = error_of(response, 503)
    assert response.headers["retry-after"] == "3"
    assert error["provider"] == "judges" and "judge 'yes-no'" in error["message"]


async def test_a_judge_prompt_the_model_refuses_is_a_400_naming_the_generation(http):
    error = error_of(await score(http, "yes-no", item("Q", "fine", "too long")), 400)
    assert error["param"] == "prompt_generations[0].k_generations[1]"
    assert "judge 'yes-no'" in error["message"] and "replayed model failed with 400" in error["message"]


async def test_a_refusal_without_a_field_names_the_generation_or_else_the_prompt_its_batch_holds(http):
    alone = error_of(await score(http, "yes-no", item("Q", "fine", "fine", "overlong")), 400)
    assert alone["param"] == "prompt_generations[0].k_generations[2]"  # batch_size 2: alone in its batch
    together = error_of(await score(http, "yes-no", item("Q", "overlong", "fine")), 400)
    assert together["param"] == "prompt_generations[0]"


async def test_an_unexpected_failure_is_a_502_that_keeps_its_details_in_the_log(http, caplog):
    error = error_of(await score(http, "unbatched", item("Q", "crash")), 502)
    assert "failed unexpectedly" in error["message"] and "/etc/shadow" not in error["message"]
    assert "/etc/shadow" in caplog.text


async def test_a_judge_whose_model_is_no_longer_served_is_a_404_naming_the_judge(tmp_path, registry):
    """A judge may name an llm registered at run time (restored before the judges at start); once that llm is
    unregistered, the judge's requests say what happened."""
    path = distribution(tmp_path)
    first = Stack.from_distribution(path, registry=registry)
    await first.start()
    try:
        async with asgi_client(first) as client:
            llm = {"model_id": "temp-llm", "provider_id": "replay", "metadata": {"rules": YES_NO_RULES}}
            registered = await client.post("/models/register", json=llm)
            assert registered.status_code == 200, registered.text
    finally:
        await first.shutdown()

    document = yaml.safe_load(path.read_text())
    judge = {"model_id": "temp-judge", "provider_id": "judges", "provider_model_id": "temp-llm", "model_type": "reward"}
    document["models"].append(judge)
    path.write_text(yaml.safe_dump(document))
    second = Stack.from_distribution(path, registry=registry)
    await second.start()
    try:
        async with asgi_client(second) as client:
            assert await scores(client, "temp-judge", item("Q", "Paris.")) == [[pytest.approx(0.65 / 0.9)]]
            gone = await client.delete("/models/unregister", params={"model_id": "temp-llm"})
            assert gone.status_code in (200, 204), gone.text
            error = error_of(await score(client, "temp-judge", item("Q", "Paris.")), 404)
    finally:
        await second.shutdown()
    assert error["provider"] == "judges" and error["code"] == "judge_model_not_served"
    assert "judge 'temp-judge'" in error["message"] and "'temp-llm'" in error["message"]
    assert "replay-llm" in error["message"]  # what is served


# --------------------------------------------------------------------------------------------- entries


@pytest.mark.parametrize(
    ("entry", "param", "words"),
    [
        ({"model_type": "llm"}, "model_type", "set model_type: reward"),
        ({"provider_model_id": None}, "provider_model_id", "set provider_model_id"),
        ({"provider_model_id": "nowhere"}, "provider_model_id", "its llms: plain-llm, replay-llm, replay-rater"),
        ({"metadata": {"mode": "stars"}}, "metadata.mode", "yes_no, rating"),
        ({"metadata": {"system_prompt": "x"}}, "metadata.system_prompt", "the entry's own system_prompt field"),
        ({"metadata": {"prompt": "Judge {response}"}}, "metadata.prompt", "no {conversation}"),
        (
            {"metadata": {"prompt": "{conversation} {response} {score}"}},
            "metadata.prompt",
            "unknown placeholder {score}",
        ),
        ({"metadata": {"prompt": "{conversation} {response} {"}}, "metadata.prompt", "literal brace"),
        ({"metadata": {"prompt": "{conversation!r} {response}"}}, "metadata.prompt", "no conversion"),
        ({"metadata": {"prompt": 7}}, "metadata.prompt", "non-empty text"),
    ],
)
async def test_a_bad_judge_entry_is_a_400_naming_the_model_and_the_field(stack, entry, param, words):
    body = {"model_id": "bad-judge", "provider_id": "judges", "provider_model_id": "replay-llm", "model_type": "reward"}
    with pytest.raises(BadRequestError) as refused:
        await stack.providers["judges"].impl.register_model(Model(**{**body, **entry}))
    assert refused.value.param == param and refused.value.provider == "judges"
    assert "model 'bad-judge'" in refused.value.message and words in refused.value.message


async def test_a_bad_judge_entry_fails_the_start(tmp_path, registry):
    document = yaml.safe_load(distribution(tmp_path).read_text())
    document["models"].append(
        {"model_id": "broken", "provider_id": "judges", "provider_model_id": "ghost", "model_type": "reward"}
    )
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    stack = Stack.from_distribution(path, registry=registry)
    with pytest.raises(BadRequestError, match="model 'broken': provider_model_id 'ghost' is not an llm"):
        await stack.start()


def test_the_config_checks_its_prompts():
    with pytest.raises(ValueError, match=re.escape("no {response}")):
        LLMJudgeConfig.model_validate({"yes_no": {"prompt": "{conversation}", "system_prompt": ""}})
    with pytest.raises(ValueError, match="extra"):
        LLMJudgeConfig.model_validate({"judge_model": "x"})


def test_the_docs_quote_the_default_prompts():
    page = (REPO / "docs" / "providers" / "llm-judge.md").read_text()
    for text in (DEFAULT_YES_NO_PROMPT, DEFAULT_RATING_PROMPT):
        assert "\n".join(f"    {line}" if line else "" for line in text.split("\n")) in page
    for text in (DEFAULT_YES_NO_SYSTEM_PROMPT, DEFAULT_RATING_SYSTEM_PROMPT):
        assert f"    {text}" in page
