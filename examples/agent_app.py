"""An agent app that embeds the stack: no server, the same client as over HTTP.

It starts the `local` distribution in this process (or the YAML given as the first argument), puts a short
document in a memory bank, creates an agent with that bank, the math tool and the code_guard shield, and runs
one streamed turn, printing each step as it happens and the answer at the end.

    python examples/agent_app.py [distribution.yaml]
"""

from __future__ import annotations

import asyncio
import base64
import sys
import uuid

from llama_stack.client import LlamaStackClient

FACT = "The Andes llama festival takes place every year in the town of Quillacollo, in Bolivia."


async def main(distribution: str) -> None:
    async with await LlamaStackClient.library(distribution) as client:
        bank = f"facts-{uuid.uuid4().hex[:8]}"
        await client.memory_banks.create_memory_bank(
            bank_uuid=bank,
            bank_name="facts",
            documents=[
                {"uuid": "festival", "content": base64.b64encode(FACT.encode()).decode(), "mime_type": "text/plain"}
            ],
        )
        agent = await client.agentic_system.create_agentic_system(
            request={
                "uuid": f"helper-{uuid.uuid4().hex[:8]}",
                "instructions": "Answer in one short sentence, using the retrieved context.",
                "model": "smollm2-135m-instruct",
                "available_tools": [{"tool_name": "math"}],
                "executable_tools": ["math"],
                "memory_bank_uuids": [bank],
                "input_shields": [{"shield_type": "code_guard"}],
            }
        )
        question = "Where does the Andes llama festival take place?"
        print(f"user: {question}")
        events = await client.agentic_system.execute_agentic_system(
            request={
                "agent_uuid": agent.agent_uuid,
                "messages": [{"role": "user", "content": question}],
                "stream": True,
            }
        )
        turn = None
        async for event in events:
            if event.event_type == "step_start":
                print(f"[{event.step_type} ...]")
            elif event.response_text_delta:
                print(event.response_text_delta, end="", flush=True)
            elif event.event_type == "step_end" and event.step_type == "memory_retrieval" and event.step:
                for document, score in zip(event.step.documents, event.step.scores, strict=False):
                    print(f"  retrieved {document.uuid} (score {score:.2f})")
            if event.turn is not None:
                turn = event.turn
        print()
        assert turn is not None, "the stream ended without its turn"
        print(f"agent: {turn.response_message.content}")
        print(f"steps: {', '.join(step.step_type for step in turn.steps)}")
        await client.agentic_system.delete_agentic_system(agent_id=agent.agent_uuid)
        await client.memory_banks.drop_memory_bank(bank_uuid=bank)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "local"))
