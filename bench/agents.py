"""The agent loop's own overhead per turn.

One turn: an input shield, a model answer calling the math tool, the tool, a second model answer, an output
shield. The model, tool and shield are test-only providers replaying fixed answers (tests/agents_support.py),
so what is timed is the loop itself: the baseline calls those same providers' methods directly in the same
order, then the same turn runs through ``inline::agents`` in library mode and through the HTTP server
(uvicorn on a local port, streaming and not). Printed: per-turn medians and the overhead over the baseline.

    python bench/agents.py [--turns 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from agents_support import AGENTS_TEST_PLUGIN, MODEL, agents_distribution  # noqa: E402
from support import ReplayPlugin, uvicorn_serving  # noqa: E402

from llama_stack.apis.common import Message, ShieldType, ToolCall  # noqa: E402
from llama_stack.apis.inference import ChatCompletionRequest  # noqa: E402
from llama_stack.apis.safety import RunShieldRequest  # noqa: E402
from llama_stack.apis.tool_runtime import ToolInvocationRequest  # noqa: E402
from llama_stack.client import LlamaStackClient  # noqa: E402
from llama_stack.plugins import discover_providers  # noqa: E402
from llama_stack.resolver import Stack  # noqa: E402
from llama_stack.server import create_app  # noqa: E402

SCRIPT = [
    {"tool_calls": [{"call_id": "c1", "tool_name": "math", "arguments": {"a": 1, "b": 2}}]},
    {"text": "One and two make three, as the math tool says."},
]
SHIELD = {"shield_type": "llama_guard", "params": {}}
AGENT = {
    "instructions": "Use the math tool for sums.",
    "model": MODEL,
    "available_tools": [{"tool_name": "math"}],
    "executable_tools": ["math"],
    "input_shields": [SHIELD],
    "output_shields": [SHIELD],
}
QUESTION = [{"role": "user", "content": "What is 1 + 2?"}]


async def timed(turn: Callable[[], Awaitable[Any]], turns: int) -> float:
    """The median seconds of ``turns`` turns (after a few to warm up)."""
    for _ in range(5):
        await turn()
    seconds = []
    for _ in range(turns):
        start = time.perf_counter()
        await turn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


async def direct_turn(stack: Stack) -> None:
    """What a turn asks of the providers, called directly: the baseline."""
    model = stack.providers["scripted"].impl
    tools = stack.providers["scripted-tools"].impl
    shield = stack.providers["scripted-shield"].impl
    model.set_script(MODEL, SCRIPT)
    question = Message(role="user", content=QUESTION[0]["content"])
    await shield.run_shield(RunShieldRequest(shield_type=ShieldType.llama_guard, messages=[question]))
    calls: list[ToolCall] = []
    request = ChatCompletionRequest(model=MODEL, dialog={"message": question}, stream=True)
    async for chunk in await model.chat_completion(request):
        if chunk.tool_call is not None:
            calls.append(chunk.tool_call)
    result = await tools.invoke_tool(ToolInvocationRequest(tool_name="math", arguments=calls[0].arguments))
    answer = Message(role="tool", content=result.content)
    async for _ in await model.chat_completion(request.model_copy(update={"dialog": {"message": answer}})):
        pass
    await shield.run_shield(RunShieldRequest(shield_type=ShieldType.llama_guard, messages=[question]))


async def agent_turn(client: LlamaStackClient, stack: Stack, agent_uuid: str, stream: bool) -> None:
    stack.providers["scripted"].impl.set_script(MODEL, SCRIPT)
    answer = await client.agentic_system.execute_agentic_system(
        request={"agent_uuid": agent_uuid, "messages": QUESTION, "stream": stream}
    )
    if stream:
        async for _ in answer:
            pass


async def main(turns: int) -> None:
    registry = discover_providers(extra_plugins=[ReplayPlugin(), AGENTS_TEST_PLUGIN])
    with tempfile.TemporaryDirectory(prefix="llama-stack-bench-agents-") as directory:
        stack = Stack.from_distribution(agents_distribution(Path(directory)), registry=registry)
        library = await LlamaStackClient.library(stack)
        try:
            agent = await library.agentic_system.create_agentic_system(request={"uuid": "bench", **AGENT})
            results = {"direct (the providers' answers)": await timed(lambda: direct_turn(stack), turns)}
            for stream in (False, True):
                results[f"library, stream={stream}"] = await timed(
                    lambda stream=stream: agent_turn(library, stack, agent.agent_uuid, stream), turns
                )
            async with uvicorn_serving(create_app(stack)) as url:
                http = LlamaStackClient.http(url)
                try:
                    for stream in (False, True):
                        results[f"HTTP, stream={stream}"] = await timed(
                            lambda stream=stream: agent_turn(http, stack, agent.agent_uuid, stream), turns
                        )
                finally:
                    await http.aclose()
        finally:
            await library.aclose()
    baseline = results["direct (the providers' answers)"]
    print(f"agent turn (shield, model -> math tool -> model, shield), median of {turns} turns:")
    for name, seconds in results.items():
        overhead = (seconds - baseline) * 1000
        print(f"  {name:34s} {seconds * 1000:7.2f} ms   overhead {overhead:6.2f} ms   ratio {seconds / baseline:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    asyncio.run(main(parser.parse_args().turns))
