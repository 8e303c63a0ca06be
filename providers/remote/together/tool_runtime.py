"""The tool runtime on remote::together: ``image_gen`` and ``code_interpreter``.

- ``image_gen`` -> ``POST /images/generations`` with ``config.image_model`` and ``config.image_steps``; each
  image comes back as an attachment with a ``data:image/...;base64,`` URL (the type read from the image's
  own bytes), or with the vendor's https URL when it answers URLs instead of base64.
- ``code_interpreter`` -> ``POST /tci/execute`` (``{code, language: "python", session_id?, files?}``). The
  specs give no response schema; the parser reads Together's documented shape
  ``{data: {session_id, status, outputs: [{type, data}]}, errors}`` and tolerates missing parts. Code that
  raises is a result with ``error`` set, not an HTTP error: the tool ran, the code failed.

Arguments are checked against the schemas :meth:`list_tools` publishes before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llama_stack.apis.common import Attachment, BuiltinTool, ToolDefinition
from llama_stack.apis.errors import BadRequestError, NotFoundError, NotSupportedError, ProviderError
from llama_stack.apis.tool_runtime import ToolInvocationRequest, ToolInvocationResult
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.remote import VendorStatusError
from llama_stack.providers.utils.remote.adapter import RemoteAdapter
from llama_stack.providers.utils.remote.redaction import excerpt, scrub_text
from llama_stack.providers.utils.tools import tool_arguments

from .config import TogetherToolRuntimeConfig
from .service import together_service

TOOLS = (BuiltinTool.image_gen.value, BuiltinTool.code_interpreter.value)
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"}


# ------------------------------------------------------------------------------------------- arguments
class _Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageGenArguments(_Arguments):
    # "query" like the built-in's Llama 3.1 definition (photogen), so a model's own call fits as is.
    query: str = Field(min_length=1, description="A description of the image to generate.")
    n: int = Field(default=1, ge=1, description="How many images to generate.")
    width: int = Field(default=1024, ge=64, le=2048, description="Width in pixels.")
    height: int = Field(default=1024, ge=64, le=2048, description="Height in pixels.")
    seed: int | None = Field(default=None, description="Seed, to reproduce a generation.")
    negative_prompt: str | None = Field(default=None, description="What the image should not show.")


class CodeFile(_Arguments):
    name: str = Field(min_length=1, description="The file's name in the session's working directory.")
    content: str = Field(description="The file's content.")
    encoding: Literal["string", "base64"] = Field(default="string", description="How content is encoded.")


class CodeInterpreterArguments(_Arguments):
    code: str = Field(min_length=1, description="The Python code to run.")
    session_id: str | None = Field(
        default=None,
        description="A session_id an earlier run returned in its metadata, to run in that session's state.",
    )
    files: list[CodeFile] = Field(default_factory=list, description="Files to put in the session before running.")


def _schema(model: type[BaseModel], max_images: int | None = None) -> dict[str, Any]:
    """The model's JSON Schema without pydantic's titles (noise for the model reading it)."""
    schema = _without_titles(model.model_json_schema())
    if max_images is not None:
        schema["properties"]["n"]["maximum"] = max_images
    return schema


def _without_titles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_titles(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_without_titles(v) for v in node]
    return node


# ------------------------------------------------------------------------------------------------ impl
class TogetherToolRuntime(RemoteAdapter[TogetherToolRuntimeConfig]):
    async def list_tools(self) -> list[ToolDefinition]:
        return [
            ToolDefinition(
                tool_name=BuiltinTool.image_gen,
                description=f"Generate images from a description (Together, {self.config.image_model}).",
                parameters=_schema(ImageGenArguments, self.config.max_images),
            ),
            ToolDefinition(
                tool_name=BuiltinTool.code_interpreter,
                description=(
                    "Run Python code in a sandbox and return what it printed, its errors and any images it "
                    "displayed. Pass the session_id of an earlier run to keep its variables and files."
                ),
                parameters=_schema(CodeInterpreterArguments),
            ),
        ]

    async def invoke_tool(self, request: ToolInvocationRequest) -> ToolInvocationResult:
        name = request.tool_name.value if isinstance(request.tool_name, BuiltinTool) else request.tool_name
        if name == BuiltinTool.image_gen.value:
            return await self._image_gen(self._arguments(ImageGenArguments, name, request.arguments))
        if name == BuiltinTool.code_interpreter.value:
            return await self._code_interpreter(self._arguments(CodeInterpreterArguments, name, request.arguments))
        if name in (BuiltinTool.web_search.value, BuiltinTool.math.value):
            raise NotSupportedError(
                f"{self.service.name} cannot run {name}: Together has no such service. Its tools are "
                f"{', '.join(TOOLS)}; serve {name} from another tool runtime",
                param="tool_name",
                provider=self._id,
                code="unsupported_tool",
            )
        raise NotFoundError(
            f"{self.service.name} has no tool {name!r}; its tools are {', '.join(TOOLS)}",
            param="tool_name",
            provider=self._id,
        )

    def _arguments(self, model: type[_Arguments], tool: str, arguments: dict[str, Any]) -> Any:
        parsed = tool_arguments(model, tool, arguments, self._id)
        if isinstance(parsed, ImageGenArguments) and parsed.n > self.config.max_images:
            raise BadRequestError(
                f"image_gen: arguments.n is {parsed.n}; {self.service.name} generates at most "
                f"{self.config.max_images} images per call (max_images in its config)",
                param="arguments.n",
                provider=self._id,
            )
        return parsed

    # ------------------------------------------------------------------------------------- image_gen
    async def _image_gen(self, arguments: ImageGenArguments) -> ToolInvocationResult:
        body: dict[str, Any] = {
            "model": self.config.image_model,
            "prompt": arguments.query,
            "steps": self.config.image_steps,
            "n": arguments.n,
            "width": arguments.width,
            "height": arguments.height,
        }
        if arguments.seed is not None:
            body["seed"] = arguments.seed
        if arguments.negative_prompt:
            body["negative_prompt"] = arguments.negative_prompt
        answer = await self.service.json("POST", "/images/generations", json_body=body)
        attachments = self._images(answer)
        count = f"{len(attachments)} image{'s' if len(attachments) != 1 else ''}"
        metadata: dict[str, Any] = {"model": answer.get("model", self.config.image_model), "id": answer.get("id")}
        if arguments.seed is not None:
            metadata["seed"] = arguments.seed
        return ToolInvocationResult(
            content=f"Generated {count} ({arguments.width}x{arguments.height}) of: {arguments.query}",
            attachments=attachments,
            metadata=metadata,
        )

    def _images(self, answer: Any) -> list[Attachment]:
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data:
            raise ProviderError(
                f"{self.service.name} answered the image generation without images: {excerpt(answer)}",
                provider=self._id,
            )
        items = sorted(data, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0)
        return [self._image(item) for item in items]

    def _image(self, item: Any) -> Attachment:
        encoded = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(encoded, str):
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise ProviderError(
                    f"{self.service.name} sent an image whose base64 data is invalid", provider=self._id
                ) from None
            mime_type = image_type(raw)
            return Attachment(url=f"data:{mime_type};base64,{encoded}", mime_type=mime_type)
        url = item.get("url") if isinstance(item, dict) else None
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            guessed = mimetypes.guess_type(url.split("?", 1)[0])[0]
            return Attachment(url=url, mime_type=guessed if guessed in IMAGE_TYPES else "image/jpeg")
        raise ProviderError(
            f"{self.service.name} sent an image with neither b64_json nor a URL: {excerpt(item)}",
            provider=self._id,
        )

    # ------------------------------------------------------------------------------ code_interpreter
    async def _code_interpreter(self, arguments: CodeInterpreterArguments) -> ToolInvocationResult:
        body: dict[str, Any] = {"code": arguments.code, "language": "python"}
        if arguments.session_id:
            body["session_id"] = arguments.session_id
        if arguments.files:
            body["files"] = [file.model_dump() for file in arguments.files]
        try:
            # Running code twice is not harmless (files, state), so a dropped connection is not retried.
            answer = await self.service.json("POST", "/tci/execute", json_body=body, idempotent=False)
        except VendorStatusError as exc:
            if exc.vendor_status == 404 and arguments.session_id:
                raise NotFoundError(
                    f"{self.service.name} has no code session {arguments.session_id!r} (it expired or belongs to "
                    f"another key): {exc.vendor_message}. Leave session_id out to start a new session",
                    param="arguments.session_id",
                    provider=self._id,
                ) from None
            raise
        return self._execution(answer)

    def _execution(self, answer: Any) -> ToolInvocationResult:
        data = answer.get("data") if isinstance(answer, dict) else None
        errors = _error_messages(answer.get("errors") if isinstance(answer, dict) else None)
        if not isinstance(data, dict):
            if errors:
                raise ProviderError(
                    f"{self.service.name} did not run the code: {scrub_text('; '.join(errors))}", provider=self._id
                )
            raise ProviderError(
                f"{self.service.name} answered the code execution without data: {excerpt(answer)}",
                provider=self._id,
            )
        run = Execution()
        outputs = data.get("outputs")
        for output in outputs if isinstance(outputs, list) else []:
            run.add(output)
        status = data.get("status")
        failures = [*run.errors, *errors]
        if not failures and isinstance(status, str) and status.lower() in ("error", "failed", "failure"):
            failures.append(f"the execution ended with status {status!r}")
        metadata: dict[str, Any] = {"session_id": data.get("session_id")}
        if isinstance(status, str):
            metadata["status"] = status
        return ToolInvocationResult(
            content=run.content(failures),
            attachments=run.attachments,
            error="\n".join(failures) or None,
            metadata=metadata,
        )


class Execution:
    """What one code run produced, gathered from its outputs in order."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.errors: list[str] = []
        self.attachments: list[Attachment] = []

    def add(self, output: Any) -> None:
        if not isinstance(output, dict):
            return
        kind, data = output.get("type"), output.get("data")
        if kind in ("stdout", "stderr"):
            if isinstance(data, str):
                self.text.append(data)
        elif kind == "error":
            self.errors.append(_error_text(data))
        elif kind in ("display_data", "execute_result"):
            self._rich(data)

    def _rich(self, data: Any) -> None:
        """A Jupyter-style mime bundle: images become attachments, text/plain stays text."""
        if isinstance(data, str):
            self.text.append(data)
            return
        if not isinstance(data, dict):
            return
        image = next(
            (t for t in ("image/png", "image/jpeg", "image/gif", "image/webp") if isinstance(data.get(t), str)), None
        )
        if image is not None:
            encoded = "".join(data[image].split())
            self.attachments.append(Attachment(url=f"data:{image};base64,{encoded}", mime_type=image))
        elif isinstance(data.get("image/svg+xml"), str):
            encoded = base64.b64encode(data["image/svg+xml"].encode()).decode()
            self.attachments.append(Attachment(url=f"data:image/svg+xml;base64,{encoded}", mime_type="image/svg+xml"))
        if isinstance(data.get("text/plain"), str) and image is None:
            self.text.append(data["text/plain"] + "\n")

    def content(self, failures: list[str]) -> str:
        parts = ["".join(self.text).rstrip("\n")] if self.text else []
        if self.attachments:
            n = len(self.attachments)
            parts.append(f"[{n} image{'s' if n != 1 else ''} displayed, attached]")
        parts += failures
        return "\n".join(p for p in parts if p) or "The code ran and printed nothing."


def _error_text(data: Any) -> str:
    """An error output as text: a traceback string, or Jupyter's {ename, evalue, traceback}."""
    if isinstance(data, str):
        return data.rstrip("\n")
    if isinstance(data, dict):
        trace = data.get("traceback")
        if isinstance(trace, list) and trace:
            return "\n".join(str(line) for line in trace).rstrip("\n")
        if isinstance(trace, str) and trace:
            return trace.rstrip("\n")
        name, value = data.get("ename"), data.get("evalue")
        if name or value:
            return f"{name or 'Error'}: {value or ''}".rstrip(": ")
    return json.dumps(data)


def _error_messages(errors: Any) -> list[str]:
    if not errors:
        return []
    items = errors if isinstance(errors, list) else [errors]
    return [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in items]


def image_type(raw: bytes) -> str:
    """An image's mime type from its leading bytes (Together sends JPEG unless asked otherwise)."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


async def build(config: TogetherToolRuntimeConfig, context: ProviderContext) -> TogetherToolRuntime:
    return TogetherToolRuntime(config, together_service(config, context))
