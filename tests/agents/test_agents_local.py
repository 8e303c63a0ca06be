"""Agent turns on the default local distribution's real model, over HTTP: streamed and not, with a shield."""

from __future__ import annotations

import uuid

import pytest

from llama_stack.client import LlamaStackClient

pytestmark = pytest.mark.slow


async def test_a_turn_on_the_local_model_runs_its_shield_and_answers_streamed_and_not(local_server):
    client = LlamaStackClient.http(local_server)
    try:
        agent = await client.agentic_system.create_agentic_system(
            request={
                "uuid": f"local-{uuid.uuid4().hex[:8]}",
                "instructions": "Answer in one short sentence.",
                "model": "smollm2-135m-instruct",
                "input_shields": [{"shield_type": "code_guard"}],
            }
        )
        question = [{"role": "user", "content": "What is the capital of France?"}]
        whole = await client.agentic_system.execute_agentic_system(
            request={"agent_uuid": agent.agent_uuid, "messages": question}
        )
        assert [step.step_type for step in whole.turn.steps] == ["safety_filtering", "model_inference"]
        assert "Paris" in whole.turn.response_message.content

        events = await client.agentic_system.execute_agentic_system(
            request={"agent_uuid": agent.agent_uuid, "messages": question, "stream": True}
        )
        seen = [event async for event in events]
        text = "".join(e.response_text_delta or "" for e in seen if e.event_type == "step_progress")
        turn = seen[-1].turn
        assert turn is not None and text == turn.response_message.content == whole.turn.response_message.content
        assert [(e.event_type, e.step_type) for e in seen if e.event_type != "step_progress"] == [
            ("step_start", "safety_filtering"),
            ("step_end", "safety_filtering"),
            ("step_start", "model_inference"),
            ("step_end", "model_inference"),
        ]

        # Code the shield finds insecure ends the turn before the model is asked.
        insecure = [{"role": "user", "content": "Is this fine?\n```python\nimport hashlib\nhashlib.md5(b'x')\n```"}]
        blocked = await client.agentic_system.execute_agentic_system(
            request={"agent_uuid": agent.agent_uuid, "messages": insecure}
        )
        (safety,) = blocked.turn.steps
        assert safety.violation is not None and "CWE-328" in safety.violation.violation_type
        await client.agentic_system.delete_agentic_system(agent_id=agent.agent_uuid)
    finally:
        await client.aclose()
