"""inline::math's tool runtime: the ``math`` tool.

An expression is checked here (:mod:`.expression`: length, nesting, a whitelist of syntax and names)
before a worker is asked, so a refused one costs the server nothing; the worker evaluates it with sympy
(:mod:`.evaluate`) under a time and memory limit (:mod:`.workers`).

What comes back:

- arguments that do not fit, or an expression refused (unsafe syntax, unknown function, too long, too
  deep, a power too large to compute) -> 400 naming ``arguments.<field>``;
- an evaluation that fails (sympy cannot do it, the time limit, the memory limit) -> a result with
  ``error`` set: the tool ran, the computation failed, and the model reads why;
- otherwise the exact and/or numeric answer as text, and both in ``metadata``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.common import BuiltinTool, ToolDefinition
from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.tools import invoked_tool, tool_arguments

from .config import MathToolConfig
from .expression import ExpressionRefused, Limits, check, function_list
from .workers import MathWorkers

TOOL = BuiltinTool.math.value


class MathArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        description=(
            "A math expression in Python/sympy syntax, e.g. 'sqrt(8)', 'integrate(x**2, x)', "
            "'solve(x**2 - 4, x)', 'sin(pi/6)', '1/3 + 1/6'. Unknown names are symbols."
        ),
    )
    mode: Literal["exact", "numeric", "both"] = Field(
        default="both", description="'exact' (symbolic), 'numeric' (decimal), or 'both'."
    )
    precision: int = Field(default=15, ge=1, description="Significant digits of the numeric answer.")


def _parameters(config: MathToolConfig) -> dict[str, Any]:
    schema = MathArguments.model_json_schema()
    schema.pop("title", None)
    for prop in schema["properties"].values():
        prop.pop("title", None)
    schema["properties"]["expression"]["maxLength"] = config.max_expression_length
    schema["properties"]["precision"]["maximum"] = config.max_precision
    return schema


class MathToolRuntime:
    def __init__(self, config: MathToolConfig, provider_id: str):
        self.config = config
        self.provider_id = provider_id
        self.limits = Limits(
            max_length=config.max_expression_length, max_depth=config.max_depth, max_digits=config.max_digits
        )
        self.workers = MathWorkers(config, provider_id)

    async def list_tools(self) -> list[ToolDefinition]:
        return [
            ToolDefinition(
                tool_name=BuiltinTool.math,
                description=(
                    "Evaluate a math expression exactly and numerically with sympy: arithmetic with exact "
                    "fractions and roots, algebra (solve, factor, expand, simplify), calculus (diff, integrate, "
                    f"limit, series, summation), matrices. Functions: {function_list()}."
                ),
                parameters=_parameters(self.config),
            )
        ]

    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        name = invoked_tool(request)
        if name != TOOL:
            raise NotFoundError(
                f"provider '{self.provider_id}' (math) has no tool {name!r}; its tool is {TOOL}",
                param="tool_name",
                provider=self.provider_id,
            )
        arguments = self._arguments(request.arguments)
        try:
            check(arguments.expression, self.limits)
        except ExpressionRefused as exc:
            raise self._refused(str(exc)) from None
        answer = await self.workers.evaluate(arguments.model_dump())
        if "refused" in answer:
            raise self._refused(answer["refused"])
        if "failed" in answer:
            message = f"could not evaluate {arguments.expression!r}: {answer['failed']}"
            return ToolInvocationResult(content=message, error=message, metadata={"expression": arguments.expression})
        return self._result(arguments, answer)

    def _arguments(self, raw: dict[str, Any]) -> MathArguments:
        arguments = tool_arguments(MathArguments, TOOL, raw, self.provider_id)
        if arguments.precision > self.config.max_precision:
            raise BadRequestError(
                f"math: arguments.precision is {arguments.precision}; at most {self.config.max_precision} digits",
                param="arguments.precision",
                provider=self.provider_id,
            )
        return arguments

    def _refused(self, why: str) -> BadRequestError:
        return BadRequestError(
            f"math refused the expression: {why}",
            param="arguments.expression",
            provider=self.provider_id,
            code="expression_refused",
        )

    @staticmethod
    def _result(arguments: MathArguments, answer: dict[str, Any]) -> ToolInvocationResult:
        exact, numeric = answer.get("exact"), answer.get("numeric")
        if arguments.mode == "exact":
            content = str(exact)
        elif arguments.mode == "numeric":
            content = str(numeric)
        else:
            content = f"exact: {exact}\nnumeric: {numeric}"
        metadata: dict[str, Any] = {"expression": arguments.expression, "mode": arguments.mode}
        if exact is not None:
            metadata["exact"] = exact
        if numeric is not None:
            metadata["numeric"] = numeric
            metadata["precision"] = arguments.precision
        return ToolInvocationResult(content=content, metadata=metadata)

    async def shutdown(self) -> None:
        await self.workers.close()


async def build(config: MathToolConfig, context: ProviderContext) -> MathToolRuntime:
    # The worker imports sympy; find it missing now, so the start fails naming the extra, not a request.
    if importlib.util.find_spec("sympy") is None:
        raise ImportError("sympy is not installed; install 'llama-stack-runtime[math]'")
    return MathToolRuntime(config, context.provider_id)
