"""inline::math: exact and numeric answers through the stack, and expressions that must never run.

The stack is served in-process (the library client) and over HTTP (ASGI); sympy runs in the provider's
worker process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.client import LlamaStackClient
from llama_stack.resolver import Stack
from llama_stack.server import create_app

# Generous for real answers (a loaded machine is slow); the runaway tests use a stack with SHORT_TIMEOUT.
TIMEOUT = 20.0
SHORT_TIMEOUT = 1.5


async def _stack(directory: Path, config: dict[str, Any]) -> Stack:
    path = directory / "math.yaml"
    document = {
        "version": 1,
        "name": "math-test",
        "apis": ["tool_runtime"],
        "providers": {"tool_runtime": [{"provider_id": "math", "provider_type": "inline::math", "config": config}]},
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    stack = Stack.from_distribution(path)
    await stack.start()
    return stack


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """One stack (and its worker process) for the module: a worker start costs about half a second."""
    stack = await _stack(tmp_path_factory.mktemp("math"), {"timeout": TIMEOUT})
    yield stack
    await stack.shutdown()


@pytest.fixture(scope="module")
async def short_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    stack = await _stack(tmp_path_factory.mktemp("math-short"), {"timeout": SHORT_TIMEOUT})
    yield stack
    await stack.shutdown()


@pytest.fixture
async def tools(stack: Stack) -> Any:
    return (await LlamaStackClient.library(stack)).tool_runtime


@pytest.fixture
async def short_tools(short_stack: Stack) -> Any:
    return (await LlamaStackClient.library(short_stack)).tool_runtime


async def run(tools: Any, expression: str, **options: Any) -> Any:
    return await tools.invoke_tool(tool_name="math", arguments={"expression": expression, **options})


# ---------------------------------------------------------------------------------------------- answers
@pytest.mark.parametrize(
    ("expression", "exact", "numeric"),
    [
        ("sqrt(8)", "2*sqrt(2)", "2.82842712474619"),
        ("integrate(x**2, x)", "x**3/3", "0.333333333333333*x**3"),
        ("integrate(x**2, (x, 0, 3))", "9", "9.00000000000000"),
        ("solve(x**2 - 4, x)", "[-2, 2]", "[-2.0, 2.0]"),
        ("sin(pi/6)", "1/2", "0.500000000000000"),
        ("1/3 + 1/6", "1/2", "0.500000000000000"),
        ("Rational(3, 4) - 1/8", "5/8", "0.625000000000000"),
        ("0.1 + 0.2", "3/10", "0.300000000000000"),  # decimals as written, not as binary floats
        ("2^10", "1024", "1024.00000000000"),
        ("diff(sin(x)*x, x)", "x*cos(x) + sin(x)", "x*cos(x) + sin(x)"),
        ("limit(sin(x)/x, x, 0)", "1", "1.00000000000000"),
        ("summation(1/k**2, (k, 1, oo))", "pi**2/6", "1.64493406684823"),
        ("factor(x**2 - 1)", "(x - 1)*(x + 1)", "(x - 1.0)*(x + 1.0)"),
        ("ln(e**3)", "3", "3.00000000000000"),
        ("Eq(2 + 2, 4)", "True", "True"),
    ],
)
async def test_exact_and_numeric_answers(tools, expression, exact, numeric):
    result = await run(tools, expression)
    assert result.error is None
    assert result.content == f"exact: {exact}\nnumeric: {numeric}"
    assert result.metadata["exact"] == exact and result.metadata["numeric"] == numeric


async def test_solve_with_dict_and_a_system_of_equations(tools):
    result = await run(tools, "solve((x + y - 3, x - y - 1), (x, y), dict=True)", mode="exact")
    assert result.content == "[{x: 2, y: 1}]"


async def test_mode_and_precision(tools):
    assert (await run(tools, "sqrt(8)", mode="exact")).content == "2*sqrt(2)"
    numeric = await run(tools, "pi", mode="numeric", precision=30)
    assert numeric.content == "3.14159265358979323846264338328"
    assert "exact" not in numeric.metadata and numeric.metadata["precision"] == 30


async def test_list_tools_describes_math_with_its_bounds(tools):
    [tool] = await tools.list_tools()
    assert tool.tool_name.value == "math"
    assert tool.parameters["required"] == ["expression"]
    assert tool.parameters["properties"]["expression"]["maxLength"] == 1000
    assert tool.parameters["properties"]["mode"]["enum"] == ["exact", "numeric", "both"]
    assert "integrate" in tool.description


# ------------------------------------------------------------------------------------ refused up front
@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("__import__('os')", "'__import__' is not allowed"),
        ("__import__('os').system('id')", "attribute access"),
        ("().__class__", "attribute access"),
        ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
        ("x.subs(x, 2)", "attribute access"),
        ("lambda: 1", "lambda is not allowed"),
        ("(lambda x: x)(2)", "lambda is not allowed"),
        ("(1)(2)", "only the listed functions can be called"),
        ("'abc' * 3", "strings are not allowed"),
        ("f'{x}'", "strings"),
        ("[1, 2][0]", "subscripts"),
        ("import os", "does not parse"),
        ("eval('1')", "eval() is not a function this tool knows"),
        ("open('/etc/passwd')", "open() is not a function this tool knows"),
        ("sqrt(x, **{'evaluate': False})", "unpacking"),
        ("[c for c in (1, 2)]", "comprehensions"),
        ("(y := 2)", "assignment"),
        ("x if x else 1", "conditional"),
        ("sin", "sin is a function: call it"),
        ("solve(x - 1, x, globals=1)", "takes no option 'globals'"),
        ("x = 2", "Eq(left, right)"),
        ("9**9**9", "would have about 3.7e+08 digits; at most 10000"),
        ("10**(10**6)", "would have about 1e+06 digits"),
        ("2**-10**7", "digits"),
        ("sqrt(2)**(10**9)", "exponent beyond"),
        ("1e999999", "exponent beyond"),
        ("(" * 60 + "1" + ")" * 60, "nests brackets 60 deep; at most 40"),
        ("sin(" * 45 + "x" + ")" * 45, "nests brackets 45 deep"),
        ("-" * 700 + "1", "chains more than 600 operations"),
        ("1+" * 600 + "1", "has 1201 characters; at most 1000"),
        ("solve(x - 1, x) * 10**9", "arithmetic needs numbers or expressions, not a list"),
    ],
)
async def test_unsafe_or_unbounded_expressions_are_refused_with_a_400(tools, expression, why):
    # Refused, not stopped by the time limit: the message says why (a stopped one is a result with error).
    with pytest.raises(BadRequestError) as caught:
        await run(tools, expression)
    assert caught.value.param == "arguments.expression" and caught.value.code == "expression_refused"
    assert caught.value.provider == "math"
    assert why in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("arguments", "param"),
    [
        ({}, "arguments.expression"),
        ({"expression": ""}, "arguments.expression"),
        ({"expression": "1", "mode": "symbolic"}, "arguments.mode"),
        ({"expression": "1", "precision": 0}, "arguments.precision"),
        ({"expression": "1", "precision": 101}, "arguments.precision"),
        ({"expression": "1", "code": "print(1)"}, "arguments.code"),
    ],
)
async def test_arguments_that_do_not_fit_are_400_naming_the_field(tools, arguments, param):
    with pytest.raises(BadRequestError) as caught:
        await tools.invoke_tool(tool_name="math", arguments=arguments)
    assert caught.value.param == param


async def test_another_tool_is_404(tools):
    with pytest.raises(NotFoundError) as caught:
        await tools.invoke_tool(tool_name="web_search", arguments={"query": "x"})
    assert "its tool is math" in caught.value.message


# ------------------------------------------------------------------------------- stopped while running
async def test_a_runaway_computation_is_stopped_at_the_time_limit_and_the_next_one_is_served(short_tools):
    await run(short_tools, "1")  # the worker is up: what follows times the evaluation alone
    started = time.monotonic()
    result = await run(short_tools, "factorial(10**8)")
    elapsed = time.monotonic() - started
    assert result.error is not None and f"did not finish within {SHORT_TIMEOUT:g} s" in result.error
    assert result.content == result.error
    assert SHORT_TIMEOUT <= elapsed < SHORT_TIMEOUT + 5  # killed, not waited for (it would take minutes)
    assert (await run(short_tools, "sqrt(16)", mode="exact")).content == "4"


async def test_what_sympy_cannot_do_is_a_result_with_the_error(tools):
    result = await run(tools, "sin(1, 2)")
    assert result.error is not None and result.error.startswith("could not evaluate 'sin(1, 2)': TypeError")


async def test_a_caller_that_goes_away_does_not_leave_a_busy_worker_behind(short_stack, short_tools):
    runtime = short_stack.providers["math"].impl
    task = asyncio.create_task(run(short_tools, "factorial(10**8)"))
    while not runtime.workers._slots.locked():  # the evaluation has its worker (starting or running)
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Handed the abandoned worker (still computing the factorial), this would hit the time limit instead.
    answer = await run(short_tools, "1 + 1", mode="exact")
    assert answer.error is None and answer.content == "2"


async def test_the_worker_has_none_of_the_servers_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-server-secret")
    stack = await _stack(tmp_path, {})
    try:
        worker = await stack.providers["math"].impl.workers._started()
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
        assert not [entry for entry in environ if entry.startswith(b"TOGETHER_API_KEY")]
        worker.stop()
    finally:
        await stack.shutdown()


async def test_over_http(stack):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(stack)), base_url="http://t") as http:
        good = await http.post(
            "/tool_runtime/invoke", json={"tool_name": "math", "arguments": {"expression": "sqrt(8)"}}
        )
        bad = await http.post(
            "/tool_runtime/invoke", json={"tool_name": "math", "arguments": {"expression": "().__class__"}}
        )
    assert good.status_code == 200 and good.json()["metadata"]["exact"] == "2*sqrt(2)"
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert error["param"] == "arguments.expression" and "attribute access" in error["message"]
    assert "Traceback" not in bad.text
