"""inline::code-interpreter: the ``code_interpreter`` tool, running Python in a local sandbox.

The tool runs the code once, in a fresh sandbox (see sandbox.py and launcher.py), and answers what it printed
(stdout, then stderr, each truncated with a marker), an ``error`` when the code raised or was stopped (with
the reason: the traceback, a limit it hit, the wall clock), and the files it wrote in its directory as
``data:`` attachments (bounded in number and size).
"""

from __future__ import annotations

import base64
import mimetypes
import signal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.common import Attachment, BuiltinTool, ToolDefinition
from llama_stack.apis.errors import BadRequestError, NotFoundError, ProviderError, ServiceUnavailableError
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.config import ConfigError
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.tools import invoked_tool, tool_arguments

from . import PROVIDER_TYPE
from .config import CodeInterpreterConfig
from .sandbox import Captured, RunOutcome, Sandbox, SandboxBusy, SandboxSetupError, SandboxUnavailable

TOOL = BuiltinTool.code_interpreter.value
MAX_ERROR_CHARS = 8 * 1024
TRACEBACK = "Traceback (most recent call last):"


class CodeInterpreterArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, description="The Python code to run; print what you want to see.")


class CodeInterpreterToolRuntime:
    def __init__(self, config: CodeInterpreterConfig, sandbox: Sandbox, provider_id: str):
        self.config = config
        self.sandbox = sandbox
        self.provider_id = provider_id

    async def list_tools(self) -> list[ToolDefinition]:
        config = self.config
        return [
            ToolDefinition(
                tool_name=BuiltinTool.code_interpreter,
                description=(
                    "Run Python code in a sandbox without network access and return what it printed and its "
                    f"traceback if it raised. Limits: {config.timeout_s:g} s wall clock, {config.memory_mb} MiB "
                    "of memory; each run starts fresh. Files it saves in its working directory (plots, say) come "
                    "back as attachments."
                ),
                parameters={
                    "type": "object",
                    "properties": {
                        "code": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": config.max_code_bytes,
                            "description": "The Python code to run; print what you want to see.",
                        }
                    },
                    "required": ["code"],
                    "additionalProperties": False,
                },
            )
        ]

    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        name = invoked_tool(request)
        if name != TOOL:
            raise NotFoundError(
                f"{self.provider_id} ({PROVIDER_TYPE}) has no tool {name!r}; its only tool is {TOOL}",
                param="tool_name",
                provider=self.provider_id,
            )
        code = self._code(request.arguments)
        try:
            outcome = await self.sandbox.run(code)
        except SandboxBusy as exc:
            raise ServiceUnavailableError(
                f"{self.provider_id}: the code interpreter is busy ({exc}); retry later",
                provider=self.provider_id,
                retry_after=1,
            ) from None
        except SandboxSetupError as exc:
            raise ProviderError(
                f"{self.provider_id}: the code interpreter's sandbox could not be set up: {exc}",
                provider=self.provider_id,
            ) from None
        return self._result(outcome)

    def _code(self, arguments: dict[str, Any]) -> str:
        code = tool_arguments(CodeInterpreterArguments, TOOL, arguments, self.provider_id).code
        size = len(code.encode("utf-8", errors="surrogatepass"))
        if size > self.config.max_code_bytes:
            raise BadRequestError(
                f"{TOOL}: arguments.code is {size} bytes; {self.provider_id} runs at most "
                f"{self.config.max_code_bytes} (max_code_bytes in its config)",
                param="arguments.code",
                provider=self.provider_id,
            )
        if "\x00" in code:
            raise BadRequestError(
                f"{TOOL}: arguments.code contains a NUL character", param="arguments.code", provider=self.provider_id
            )
        return code

    def _result(self, outcome: RunOutcome) -> ToolInvocationResult:
        content = _text(outcome.stdout, "stdout")
        stderr = _text(outcome.stderr, "stderr")
        if stderr:
            content += ("\n" if content and not content.endswith("\n") else "") + "[stderr]\n" + stderr
        attachments = [
            Attachment(url=f"data:{mime};base64,{base64.b64encode(f.data).decode()}", mime_type=mime)
            for f in outcome.files
            if f.data is not None
            for mime in [mimetypes.guess_type(f.name)[0] or "application/octet-stream"]
        ]
        return ToolInvocationResult(
            content=content,
            attachments=attachments,
            error=self._error(outcome),
            metadata={
                "isolation": self.sandbox.mode,
                "exit_code": outcome.exit_code,
                "timed_out": outcome.timed_out,
                "duration_s": round(outcome.duration_s, 3),
                "stdout_bytes": outcome.stdout.total,
                "stderr_bytes": outcome.stderr.total,
                "files": [
                    {"name": f.name, "size": f.size, "attached": f.data is not None}
                    for f in outcome.files  # over max_attachment_bytes: listed, not attached
                ],
                "files_left_out": outcome.files_skipped,
            },
        )

    def _error(self, outcome: RunOutcome) -> str | None:
        """Why the code failed, for the model: the reason first, then the traceback if there is one."""
        config = self.config
        if outcome.timed_out:
            reason = f"stopped: the code ran past the {config.timeout_s:g} s wall-clock limit"
        elif outcome.exit_code is None or outcome.exit_code == 0:
            return None
        elif outcome.exit_code < 0:
            reason = _signal_reason(-outcome.exit_code, config)
        else:
            reason = f"the code exited with status {outcome.exit_code}"
        traceback = _traceback(outcome.stderr)
        if traceback and traceback.rstrip().endswith("MemoryError"):
            reason = f"stopped: the code ran out of memory (limit {config.memory_mb} MiB)"
        elif traceback and traceback.rstrip().endswith("BlockingIOError: [Errno 11] Resource temporarily unavailable"):
            reason = f"stopped: the code hit the process limit ({config.max_processes} processes and threads)"
        elif traceback:
            reason = "the code raised an exception"
        return (reason + ("\n" + traceback if traceback else ""))[:MAX_ERROR_CHARS]


def _signal_reason(number: int, config: CodeInterpreterConfig) -> str:
    if number == signal.SIGXCPU:
        return f"stopped: the code used more than {config.cpu_time_s} s of CPU time"
    if number == signal.SIGXFSZ:
        return f"stopped: the code wrote a file larger than {config.max_file_size_mb} MiB"
    if number == signal.SIGKILL:
        return "killed (SIGKILL): past the CPU-time limit, or out of memory"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return f"the code was killed by {name}"


def _text(captured: Captured, stream: str) -> str:
    text = captured.data.decode("utf-8", errors="replace")
    if captured.truncated:
        text += f"\n[{stream} truncated: {captured.total - len(captured.data)} more bytes not shown]"
    return text


def _traceback(stderr: Captured) -> str:
    """The last traceback the code printed (or, without one, e.g. for a SyntaxError, stderr's end), bounded
    from its end, where the exception is."""
    text = stderr.data.decode("utf-8", errors="replace")
    tail = text[max(0, text.rfind(TRACEBACK)) :].strip("\n")
    limit = MAX_ERROR_CHARS - 200
    return tail if len(tail) <= limit else "…" + tail[-limit:]


async def build(config: CodeInterpreterConfig, context: ProviderContext) -> CodeInterpreterToolRuntime:
    # The stack's storage (every provider's) must not be readable from the sandbox even when it lies inside
    # the interpreter's installation, which is mounted there.
    hidden = [str(context.storage_dir.parent), str(context.storage_dir)]
    try:
        sandbox = await Sandbox.create(config, hidden)
    except SandboxUnavailable as exc:
        raise ConfigError(f"provider '{context.provider_id}' ({PROVIDER_TYPE}): {exc}") from None
    return CodeInterpreterToolRuntime(config, sandbox, context.provider_id)
