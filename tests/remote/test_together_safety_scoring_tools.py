"""remote::together safety (llama_guard), reward scoring (a judge model) and tool runtime (image_gen,
code_interpreter), through the library client against the fake Together API, and once through a server."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from fakes.together import API_KEY
from fakes.together_tools import PNG, image_bytes
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
from llama_stack.providers.remote.together.reward_scoring import parse_score
from llama_stack.providers.utils.remote.fan_out import fan_out

GUARD = "meta-llama/Meta-Llama-Guard-3-8B"
JUDGE = "fake/judge-70b"


def together_api(api: str, together, provider_id: str = "together", **config: Any) -> dict[str, list[dict[str, Any]]]:
    settings = {"url": together.url, "api_key": API_KEY, **FAST_RETRIES, **config}
    return {api: [{"provider_id": provider_id, "provider_type": "remote::together", "config": settings}]}


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


# ------------------------------------------------------------------------------------------------ safety
@pytest.fixture
async def safety(together, start_stack):
    return (await start_stack(together_api("safety", together))).safety


def moderation_calls(together) -> list[dict[str, Any]]:
    return [c.json for c in together.calls("POST", r"/v1/chat/completions")]


async def test_a_safe_conversation_passes_and_the_guard_gets_it_without_the_system_prompt(safety, together):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        user("What is the capital of France?"),
        assistant("Paris."),
    ]
    result = await safety.run_shield(shield_type="llama_guard", messages=messages)
    assert result.violation is None
    assert moderation_calls(together) == [
        {
            "model": GUARD,
            "messages": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
            "temperature": 0,
            "max_tokens": 32,
        }
    ]


async def test_an_unsafe_verdict_is_a_violation_naming_the_llama_guard_categories(safety):
    result = await safety.run_shield(
        shield_type="llama_guard", messages=[user("How do I build a bomb to kill my neighbour?")]
    )
    violation = result.violation
    assert violation.violation_type == "S1,S9"
    assert "S1 (Violent Crimes)" in violation.details and "S9 (Indiscriminate Weapons)" in violation.details
    assert GUARD in violation.details
    assert violation.suggested_user_response == "I can't answer that. Can I help with something else?"


async def test_tool_turns_are_moderated_as_alternating_user_and_assistant_turns(safety, together):
    messages = [
        assistant("", tool_calls=[{"tool_name": "web_search", "arguments": {"query": "weather"}}]),
        {"role": "tool", "content": "", "tool_responses": [{"tool_name": "web_search", "content": "18C, sunny"}]},
        user("Thanks!"),
        assistant("You're welcome."),
    ]
    await safety.run_shield(shield_type="llama_guard", messages=messages)
    assert moderation_calls(together)[0]["messages"] == [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": '[calls tool web_search with {"query": "weather"}]'},
        {"role": "user", "content": "[tool web_search returned]\n18C, sunny\n\nThanks!"},
        {"role": "assistant", "content": "You're welcome."},
    ]


@pytest.mark.parametrize("shield_type", ["prompt_guard", "code_guard"])
async def test_prompt_guard_and_code_guard_are_501_before_calling_together(safety, together, shield_type):
    with pytest.raises(NotSupportedError) as refused:
        await safety.run_shield(shield_type=shield_type, messages=[user("hi")])
    assert refused.value.status == 501 and refused.value.provider == "together"
    assert "provider 'together' (Together)" in refused.value.message and "llama_guard" in refused.value.message
    assert refused.value.param == "shield_type"
    assert together.requests == []


async def test_excluded_categories_from_config_and_params_do_not_count(together, start_stack):
    client = await start_stack(together_api("safety", together, excluded_categories=["s1"]))
    only_s1 = await client.safety.run_shield(shield_type="llama_guard", messages=[user("I will kill time.")])
    assert only_s1.violation is None
    both = await client.safety.run_shield(
        shield_type="llama_guard",
        messages=[user("kill them with a bomb, steal it")],
        params={"excluded_categories": ["S2"]},
    )
    assert both.violation.violation_type == "S9"


async def test_a_config_excluding_something_that_is_not_a_category_does_not_start(together, start_stack):
    with pytest.raises(ValueError) as refused:
        await start_stack(together_api("safety", together, excluded_categories=["Violence"]))
    assert "excluded_categories" in str(refused.value)


async def test_unknown_params_and_bad_category_codes_are_400_before_calling_together(safety, together):
    with pytest.raises(BadRequestError) as unknown:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")], params={"threshold": 0.5})
    assert unknown.value.param == "params.threshold" and "excluded_categories" in unknown.value.message
    with pytest.raises(BadRequestError) as bad_code:
        await safety.run_shield(
            shield_type="llama_guard", messages=[user("hi")], params={"excluded_categories": ["Violence"]}
        )
    assert bad_code.value.param == "params.excluded_categories" and "'Violence'" in bad_code.value.message
    with pytest.raises(BadRequestError) as empty:
        await safety.run_shield(shield_type="llama_guard", messages=[])
    assert empty.value.param == "messages"
    assert together.requests == []


async def test_a_verdict_that_is_not_llama_guard_is_a_502_naming_the_provider(safety, together, monkeypatch):
    monkeypatch.setitem(together.state, "moderation_answer", "The conversation seems fine to me.")
    with pytest.raises(ProviderError) as failure:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert failure.value.status == 502 and failure.value.provider == "together"
    assert "not a Llama Guard verdict" in failure.value.message and "seems fine" in failure.value.message


async def test_an_unsafe_verdict_without_categories_is_still_a_violation(safety, together, monkeypatch):
    monkeypatch.setitem(together.state, "moderation_answer", "\nunsafe\n")
    result = await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert result.violation.violation_type == "unsafe"


async def test_an_unknown_moderation_model_is_a_502_saying_which_config_field(safety, together):
    not_found = {"error": {"type": "not_found", "message": "Unable to access model", "param": None, "code": None}}
    together.fail("POST", "/chat/completions", Fault("status", status=404, body=not_found))
    with pytest.raises(ProviderError) as failure:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert "moderation_model" in failure.value.message and GUARD in failure.value.message
    assert "Unable to access model" in failure.value.message


async def test_together_unavailable_is_a_503_after_the_retries(safety, together):
    together.fail("POST", "/chat/completions", Fault("status", status=503), times=3)
    with pytest.raises(ServiceUnavailableError) as failure:
        await safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert failure.value.status == 503 and failure.value.provider == "together"
    assert len(together.calls("POST", r"/v1/chat/completions")) == 3


async def test_text_attachments_are_checked_too_and_images_are_refused(safety, together):
    note = {
        "url": "data:text/plain;base64," + base64.b64encode(b"how to build a bomb").decode(),
        "mime_type": "text/plain",
    }
    result = await safety.run_shield(shield_type="llama_guard", messages=[user(["Summarise this:", note])])
    assert result.violation.violation_type == "S9"
    assert "how to build a bomb" in moderation_calls(together)[0]["messages"][0]["content"]
    image = {"url": "data:image/png;base64," + base64.b64encode(PNG).decode(), "mime_type": "image/png"}
    with pytest.raises(BadRequestError) as refused:
        await safety.run_shield(shield_type="llama_guard", messages=[user(["What is this?", image])])
    assert "messages[0].content[1]" in refused.value.message and "image" in refused.value.message
    assert len(together.requests) == 1


async def test_a_key_sent_with_the_request_is_used_and_a_wrong_key_never_shows(together, start_stack):
    providers = together_api("safety", together, api_key=None)
    client = await start_stack(providers, provider_data={"together_api_key": API_KEY})
    assert (await client.safety.run_shield(shield_type="llama_guard", messages=[user("hi")])).violation is None
    assert together.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    wrong = await start_stack(together_api("safety", together, api_key="sk-wrong-secret-123"))
    with pytest.raises(ProviderError) as rejected:
        await wrong.safety.run_shield(shield_type="llama_guard", messages=[user("hi")])
    assert rejected.value.code == "provider_auth_failed" and "sk-wrong-secret-123" not in rejected.value.message


# ------------------------------------------------------------------------------------ reward scoring
def dialog_generations(question: str, *answers: str, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "dialog": {"message": user(question), "message_history": history or []},
        "k_generations": [assistant(a) for a in answers],
    }


def judge_calls(together) -> list[dict[str, Any]]:
    return [c.json for c in together.calls("POST", r"/v1/chat/completions")]


async def test_reward_scores_are_the_judges_per_generation_in_order(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together, judge_model=JUDGE, criteria="concise"))
    result = await client.reward_scoring.reward_score(
        model="llama3_405b_reward",
        prompt_generations=[
            dialog_generations("Capital of France?", "Paris", "It is Paris, of course", "The answer is Paris."),
            dialog_generations("2+2?", "4", history=[{"role": "system", "content": "Be brief."}]),
        ],
    )
    first, second = result.scored_generations
    assert first.prompt.content == "Capital of France?" and second.prompt.content == "2+2?"
    assert [(s.message.content, s.score) for s in first.k_scored_generations] == [
        ("Paris", 1.0),
        ("It is Paris, of course", 5.0),
        ("The answer is Paris.", 4.0),
    ]
    assert [s.score for s in second.k_scored_generations] == [1.0]
    calls = judge_calls(together)
    assert len(calls) == 4 and {c["model"] for c in calls} == {JUDGE}
    asked = next(c for c in calls if "2+2?" in c["messages"][1]["content"])
    assert asked["temperature"] == 0 and asked["max_tokens"] == 64
    assert asked["messages"][0]["role"] == "system" and "a good response is concise" in asked["messages"][0]["content"]
    assert asked["messages"][1] == {
        "role": "user",
        "content": "<conversation>\n[system]\nBe brief.\n\n[user]\n2+2?\n</conversation>\n\n<response>\n4\n</response>\n\nRate the response.",
    }


async def test_a_local_reward_model_scores_beside_together_routed_by_model(together, start_stack, tmp_path):
    """Several scorers in one distribution: each reward model entry names its provider, and a request reaches
    only the provider of the model it names."""
    from tiny_models import save_tiny_reward_model

    folder = save_tiny_reward_model(tmp_path / "tiny-rm", seed=3)
    providers = {
        "reward_scoring": [
            *together_api("reward_scoring", together, provider_id="together-judge", judge_model=JUDGE)[
                "reward_scoring"
            ],
            {
                "provider_id": "reward-model",
                "provider_type": "inline::reward-model",
                "config": {"device": "cpu", "load_in_background": False},
            },
        ]
    }
    models = [
        {"model_id": "vendor-judge", "provider_id": "together-judge", "model_type": "reward"},
        {
            "model_id": "tiny-rm",
            "provider_id": "reward-model",
            "provider_model_id": str(folder),
            "model_type": "reward",
        },
    ]
    client = await start_stack(providers, models)
    item = dialog_generations("Capital of France?", "Paris", "It is Paris, of course")
    local = await client.reward_scoring.reward_score(model="tiny-rm", prompt_generations=[item])
    assert judge_calls(together) == []
    local_scores = [s.score for s in local.scored_generations[0].k_scored_generations]
    assert len(local_scores) == 2 and local_scores[0] != local_scores[1]  # a random head scores two texts apart
    remote = await client.reward_scoring.reward_score(model="vendor-judge", prompt_generations=[item])
    assert [s.score for s in remote.scored_generations[0].k_scored_generations] == [1.0, 5.0]
    assert len(judge_calls(together)) == 2
    with pytest.raises(NotFoundError) as unknown:
        await client.reward_scoring.reward_score(model="nope", prompt_generations=[item])
    assert "tiny-rm" in unknown.value.message and "vendor-judge" in unknown.value.message


async def test_without_a_judge_model_the_requests_model_judges(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together))
    result = await client.reward_scoring.reward_score(
        model="fake/judge-8b", prompt_generations=[dialog_generations("Hi?", "Hello there, friend")]
    )
    assert result.scored_generations[0].k_scored_generations[0].score == 3.0
    assert judge_calls(together)[0]["model"] == "fake/judge-8b"


async def test_an_unreadable_judge_answer_is_asked_again_with_a_correction(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together, judge_model=JUDGE))
    result = await client.reward_scoring.reward_score(
        model="x", prompt_generations=[dialog_generations("Hi?", "I ramble a lot", "short and verbose")]
    )
    assert [s.score for s in result.scored_generations[0].k_scored_generations] == [4.0, 3.0]
    rambled = [c for c in judge_calls(together) if "I ramble a lot" in c["messages"][1]["content"]]
    assert [len(c["messages"]) for c in rambled] == [2, 4]
    assert rambled[1]["messages"][2] == {
        "role": "assistant",
        "content": "What a thoughtful answer; it deserves praise.",
    }
    assert '{"score": N}' in rambled[1]["messages"][3]["content"]


async def test_a_judge_that_never_gives_a_score_is_a_502_naming_the_provider(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together, judge_model=JUDGE, parse_retries=2))
    with pytest.raises(ProviderError) as failure:
        await client.reward_scoring.reward_score(
            model="x", prompt_generations=[dialog_generations("Hi?", "I always ramble on")]
        )
    assert failure.value.status == 502 and failure.value.provider == "together"
    assert JUDGE in failure.value.message and "3 time(s)" in failure.value.message
    assert len(judge_calls(together)) == 3


async def test_reward_scoring_vendor_failure_is_a_503_naming_the_provider(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together, judge_model=JUDGE, max_retries=0))
    together.fail("POST", "/chat/completions", Fault("status", status=429))
    with pytest.raises(ServiceUnavailableError) as failure:
        await client.reward_scoring.reward_score(model="x", prompt_generations=[dialog_generations("Hi?", "Hello")])
    assert failure.value.provider == "together" and "rate-limiting" in failure.value.message


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ('{"score": 7}', 7.0),
        ('Sure! {"score": 8.5}', 8.5),
        ('{"score": "6"}', 6.0),
        ("Score: 9/10 - very good", 9.0),
        ("I give it a score of 3.", 3.0),
        ("10", 10.0),
        ("7/10", 7.0),
        ('{"score": 11}', None),
        ("The response is great", None),
        ("-1", None),
    ],
)
def test_judge_answers_are_parsed_tolerantly_but_only_within_0_to_10(answer, score):
    assert parse_score(answer) == score


async def test_the_judge_fan_out_keeps_order_and_the_limit():
    in_flight, peak = 0, 0

    def call(value: int):
        async def run() -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(3):
                await asyncio.sleep(0)  # yield to the other calls, so they would overlap without the limit
            in_flight -= 1
            return value

        return run

    assert await fan_out([call(i) for i in range(7)], lambda run: run(), limit=2) == list(range(7))
    assert peak == 2


# -------------------------------------------------------------------------------------- tool runtime
@pytest.fixture
async def tools(together, start_stack):
    return (
        await start_stack(together_api("tool_runtime", together, image_model="fake/flux", image_steps=6))
    ).tool_runtime


async def test_list_tools_describes_image_gen_and_code_interpreter_with_json_schemas(tools):
    listed = {t.tool_name.value: t for t in await tools.list_tools()}
    assert set(listed) == {"image_gen", "code_interpreter"}
    image = listed["image_gen"].parameters
    assert image["type"] == "object" and image["required"] == ["query"]
    assert image["properties"]["n"]["maximum"] == 4 and image["additionalProperties"] is False
    code = listed["code_interpreter"].parameters
    assert code["required"] == ["code"] and set(code["properties"]) == {"code", "session_id", "files"}
    assert "fake/flux" in listed["image_gen"].description


async def test_image_gen_answers_each_image_as_a_data_url_of_the_vendors_bytes(tools, together):
    result = await tools.invoke_tool(
        tool_name="image_gen",
        arguments={"query": "a llama on the moon", "n": 2, "width": 512, "height": 768, "seed": 7},
    )
    assert result.content == "Generated 2 images (512x768) of: a llama on the moon"
    assert result.error is None and result.metadata["model"] == "fake/flux"
    for index, attachment in enumerate(result.attachments):
        assert attachment.mime_type == "image/jpeg"
        header, data = attachment.url.split(",", 1)
        assert header == "data:image/jpeg;base64"
        assert base64.b64decode(data) == image_bytes("a llama on the moon", index, 7)
    assert [c.json for c in together.calls("POST", r"/v1/images/generations")] == [
        {
            "model": "fake/flux",
            "prompt": "a llama on the moon",
            "steps": 6,
            "n": 2,
            "width": 512,
            "height": 768,
            "seed": 7,
        }
    ]


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({}, "arguments.query"),
        ({"query": "x", "n": 0}, "arguments.n"),
        ({"query": "x", "n": 5}, "arguments.n"),
        ({"query": "x", "width": "wide"}, "arguments.width"),
        ({"query": "x", "style": "oil"}, "arguments.style"),
    ],
)
async def test_bad_image_gen_arguments_are_400_naming_the_field(tools, together, arguments, param):
    with pytest.raises(BadRequestError) as refused:
        await tools.invoke_tool(tool_name="image_gen", arguments=arguments)
    assert refused.value.param == param and param in refused.value.message
    assert refused.value.provider == "together" and together.requests == []


async def test_code_interpreter_returns_stdout_and_the_session(tools, together):
    result = await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": "print('hello')\nprint('world')"})
    assert result.content == "hello\nworld" and result.error is None
    session = result.metadata["session_id"]
    assert session.startswith("ses_") and result.metadata["status"] == "success"
    again = await tools.invoke_tool(
        tool_name="code_interpreter", arguments={"code": "print('again')", "session_id": session}
    )
    assert again.metadata["session_id"] == session
    assert [c.json for c in together.calls("POST", r"/v1/tci/execute")] == [
        {"code": "print('hello')\nprint('world')", "language": "python"},
        {"code": "print('again')", "language": "python", "session_id": session},
    ]


async def test_code_that_raises_is_a_result_with_error_not_an_http_error(tools):
    code = "print('start')\nimport sys; sys.stderr.write('careful')\nraise ValueError('boom')"
    result = await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": code})
    assert result.error.endswith("ValueError: boom") and result.error.startswith("Traceback")
    assert result.content.startswith("start\ncareful\nTraceback") and result.content.endswith("ValueError: boom")


async def test_displayed_images_become_attachments_and_files_are_uploaded_first(tools, together):
    result = await tools.invoke_tool(
        tool_name="code_interpreter",
        arguments={"code": "plt.plot([1, 2]); plt.show()", "files": [{"name": "data.csv", "content": "a,b\n1,2"}]},
    )
    assert result.content == "uploaded data.csv\n[1 image displayed, attached]"
    (image,) = result.attachments
    assert image.mime_type == "image/png" and base64.b64decode(image.url.split(",", 1)[1]) == PNG
    assert together.calls("POST", r"/v1/tci/execute")[0].json["files"] == [
        {"name": "data.csv", "content": "a,b\n1,2", "encoding": "string"}
    ]


async def test_an_unknown_session_is_a_404_naming_the_argument(tools):
    with pytest.raises(NotFoundError) as missing:
        await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": "print(1)", "session_id": "ses_gone"})
    assert missing.value.param == "arguments.session_id" and "ses_gone" in missing.value.message


async def test_unknown_tools_are_404_naming_the_tools_and_web_search_is_501(tools, together):
    with pytest.raises(NotFoundError) as unknown:
        await tools.invoke_tool(tool_name="get_weather", arguments={})
    assert "'get_weather'" in unknown.value.message and "image_gen, code_interpreter" in unknown.value.message
    with pytest.raises(NotSupportedError) as unsupported:
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "news"})
    assert unsupported.value.provider == "together" and "image_gen, code_interpreter" in unsupported.value.message
    assert together.requests == []


async def test_image_service_unavailable_is_a_503_naming_the_provider(tools, together):
    together.fail("POST", "/images/generations", Fault("status", status=503), times=3)
    with pytest.raises(ServiceUnavailableError) as failure:
        await tools.invoke_tool(tool_name="image_gen", arguments={"query": "a cat"})
    assert failure.value.provider == "together" and "provider 'together' (Together)" in failure.value.message


async def test_a_dropped_code_execution_is_not_run_again(tools, together):
    together.fail("POST", "/tci/execute", Fault("drop"))
    with pytest.raises(ProviderError) as failure:
        await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": "print(1)"})
    assert failure.value.status == 502 and "dropped the connection" in failure.value.message
    assert len(together.calls("POST", r"/v1/tci/execute")) == 1


@pytest.mark.parametrize(
    ("answer", "content", "error", "metadata"),
    [
        (
            {
                "data": {
                    "session_id": "s1",
                    "outputs": [
                        {"type": "execute_result", "data": {"text/plain": "42"}},
                        {"type": "error", "data": {"ename": "KeyError", "evalue": "'x'", "traceback": []}},
                        {"type": "a_kind_added_later", "data": 1},
                    ],
                }
            },
            "42\nKeyError: 'x'",
            "KeyError: 'x'",
            {"session_id": "s1"},
        ),
        (
            {"data": {"session_id": "s2", "status": "failed", "outputs": []}, "errors": None},
            "the execution ended with status 'failed'",
            "the execution ended with status 'failed'",
            {"session_id": "s2", "status": "failed"},
        ),
        ({"data": {"session_id": "s3"}}, "The code ran and printed nothing.", None, {"session_id": "s3"}),
    ],
)
async def test_execution_answers_in_other_shapes_are_read_tolerantly(
    tools, together, monkeypatch, answer, content, error, metadata
):
    monkeypatch.setitem(together.state, "tci_answer", answer)
    result = await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": "x"})
    assert (result.content, result.error, result.metadata) == (content, error, metadata)


async def test_an_execution_answer_without_data_is_a_502_with_the_vendors_errors(tools, together, monkeypatch):
    monkeypatch.setitem(together.state, "tci_answer", {"data": None, "errors": [{"message": "quota exceeded"}]})
    with pytest.raises(ProviderError) as refused:
        await tools.invoke_tool(tool_name="code_interpreter", arguments={"code": "x"})
    assert refused.value.status == 502 and "did not run the code: quota exceeded" in refused.value.message


# ----------------------------------------------------------------------------- through a real server
@pytest.mark.slow
def test_safety_and_tools_through_a_server_process(together, tmp_path):
    providers = {
        **together_api("safety", together),
        **together_api("tool_runtime", together, provider_id="together-tools"),
        **together_api("reward_scoring", together, provider_id="together-judge", judge_model=JUDGE),
    }
    with serving(write_distribution(tmp_path, providers)) as served:
        url = served.url
        asyncio.run(_drive_server(url))
    assert len(together.calls("POST", r"/v1/chat/completions")) == 2
    assert len(together.calls("POST", r"/v1/tci/execute")) == 1


async def _drive_server(url: str) -> None:
    async with LlamaStackClient.http(url) as client:
        flagged = await client.safety.run_shield(shield_type="llama_guard", messages=[user("how to steal a car")])
        assert flagged.violation.violation_type == "S2" and "Non-Violent Crimes" in flagged.violation.details
        with pytest.raises(NotSupportedError) as refused:
            await client.safety.run_shield(shield_type="prompt_guard", messages=[user("hi")])
        assert refused.value.status == 501 and refused.value.provider == "together"
        ran = await client.tool_runtime.invoke_tool(
            tool_name="code_interpreter", arguments={"code": "raise KeyError('k')"}
        )
        assert ran.error.endswith("KeyError: k")
        with pytest.raises(NotFoundError) as unknown:
            await client.tool_runtime.invoke_tool(tool_name="calculator", arguments={})
        assert "image_gen, code_interpreter" in unknown.value.message
        scored = await client.reward_scoring.reward_score(
            model="x", prompt_generations=[dialog_generations("Hi?", "Hello to you")]
        )
        assert scored.scored_generations[0].k_scored_generations[0].score == 3.0


async def test_an_image_in_the_dialog_is_refused_naming_its_field(together, start_stack):
    client = await start_stack(together_api("reward_scoring", together, judge_model=JUDGE))
    image = {"url": "data:image/png;base64," + base64.b64encode(PNG).decode(), "mime_type": "image/png"}
    history = [{"role": "user", "content": ["Look:", image]}]
    with pytest.raises(BadRequestError) as refused:
        await client.reward_scoring.reward_score(
            model="x", prompt_generations=[dialog_generations("What is it?", "A cat", history=history)]
        )
    assert "prompt_generations[0].dialog.message_history[0].content" in refused.value.message
    assert judge_calls(together) == []
