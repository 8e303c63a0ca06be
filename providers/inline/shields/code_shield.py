"""inline::code-shield: ``code_guard`` shields that scan the code in messages with CodeShield's rules.

What is code: the fenced blocks (```` ``` ```` or ``~~~``) of each message that is not a system message (an
unclosed fence runs to the end of the message, as in Markdown), the ``code`` argument of a
``code_interpreter`` tool call, and, with ``scan_whole_messages``, each message's whole text. A block's
info string names its language (```` ```python ````); a block without one, or in a language CodeShield has
no rules for, is scanned as each of CodeShield's languages.

Any insecure pattern is a violation naming it (CWE id, rule, line). The shield fails closed: code over the
size bounds, a scan that fails or runs past ``timeout_s`` is a violation saying why, never a pass.
codeshield (and semgrep, which it brings) is imported when the provider is built, not before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_stack.apis.common import Attachment, Message, Role, SafetyViolation, ShieldType
from llama_stack.apis.errors import BadRequestError, NotSupportedError
from llama_stack.apis.safety import RunShieldRequest, RunShieldResponse
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, InlinedAttachments
from llama_stack.providers.utils.remote.shields import conversation_texts, violation

from .config import CodeShieldConfig

if TYPE_CHECKING:
    from .code_scanner import CodeScanner

log = logging.getLogger(__name__)

PARAMS = ("scan_whole_messages",)
# Findings spelled out in a violation's details; the rest are counted.
FINDINGS_SHOWN = 20

# Info strings of fenced blocks -> CodeShield's language values.
LANGUAGE_TAGS: dict[str, str] = {
    **dict.fromkeys(("python", "py", "python3", "py3", "ipython", "pycon"), "python"),
    **dict.fromkeys(("c", "h"), "c"),
    **dict.fromkeys(("cpp", "c++", "cc", "cxx", "hpp", "hh"), "cpp"),
    **dict.fromkeys(("csharp", "cs", "c#"), "csharp"),
    "java": "java",
    **dict.fromkeys(("javascript", "js", "jsx", "mjs", "cjs", "node", "typescript", "ts", "tsx"), "javascript"),
    "php": "php",
    **dict.fromkeys(("rust", "rs"), "rust"),
}

_FENCE_OPEN = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")
_FENCE_CLOSE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*$")


class ScanFailed(Exception):
    """The scan could not be completed; the code must not pass."""


@dataclass(frozen=True)
class CodePiece:
    """A piece of code to scan: where it is (for the report), its language (a CodeShield language value, or
    None when unknown: scanned as each of CodeShield's languages) and its text."""

    where: str
    language: str | None
    code: str


@dataclass(frozen=True)
class Finding:
    """An insecure pattern found: where, on which line of the piece, and what."""

    where: str
    line: int | None
    cwe_id: str
    pattern: str
    description: str
    severity: str


def fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(info word, code) of each fenced block of Markdown ``text``; an unclosed block runs to the end."""
    fence = ""
    info = ""
    lines: list[str] = []
    for line in text.splitlines():
        if not fence:
            opening = _FENCE_OPEN.match(line)
            # A backtick fence's info string holds no backtick (else it is inline code).
            if opening and not (opening["fence"][0] == "`" and "`" in opening["info"]):
                fence, info, lines = opening["fence"], opening["info"].strip(), []
            continue
        closing = _FENCE_CLOSE.match(line)
        if closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence):
            yield _info_word(info), "\n".join(lines)
            fence = ""
            continue
        lines.append(line)
    if fence:
        yield _info_word(info), "\n".join(lines)


def _info_word(info: str) -> str:
    """The language word of an info string: ``python``, ``{.python}``, ``python title="x"`` -> python."""
    word = info.split(maxsplit=1)[0] if info.split() else ""
    return word.strip("{}.").lower()


class CodeShieldSafety:
    # The stack routes a shield_type only to a provider that serves it.
    shield_types = (ShieldType.code_guard,)

    def __init__(self, config: CodeShieldConfig, context: ProviderContext, scanner: CodeScanner):
        self.config = config
        self.provider_id = context.provider_id
        self.scanner = scanner
        self._inliner = AttachmentInliner(config.attachments)
        # Trying semgrep's rules takes a second or more of CPU: it runs at the first scan, not at start (where
        # it would slow the first chat answers); scans wait for it, and a failure fails them closed.
        self._rules_dir = context.storage_dir / "semgrep-rules"
        self._prepared: asyncio.Task[None] | None = None

    async def _prepare(self, rules_dir: Path) -> None:
        try:
            skipped = await self.scanner.prepare(rules_dir)
        except ScanFailed as exc:
            log.error("%s: semgrep cannot scan; every code_guard check fails closed: %s", self.provider_id, exc)
            raise
        if skipped:
            log.warning(
                "%s: semgrep cannot parse codeshield's rules %s; they are left out",
                self.provider_id,
                ", ".join(skipped),
            )

    async def shutdown(self) -> None:
        if self._prepared is not None:
            self._prepared.cancel()
            with contextlib.suppress(asyncio.CancelledError, ScanFailed):
                await self._prepared

    async def run_shield(self, request: RunShieldRequest) -> RunShieldResponse:
        self._check_shield_type(request.shield_type)
        whole = self._whole_messages(request.params)
        texts = await conversation_texts(
            self._inliner, request.messages, model="the code scanner", provider=self.provider_id
        )
        pieces = [
            piece
            for index, message in enumerate(request.messages)
            for piece in self._code(index, message, texts, whole)
        ]
        pieces = [piece for piece in pieces if piece.code.strip()]
        if not pieces:
            return RunShieldResponse()
        too_much = self._over_bounds(pieces)
        if too_much is not None:
            return RunShieldResponse(violation=too_much)
        try:
            if self._prepared is None:
                self._prepared = asyncio.create_task(self._prepare(self._rules_dir))
            await asyncio.shield(self._prepared)
            findings = await self.scanner.scan(pieces, self.config.timeout_s)
        except ScanFailed as exc:
            return RunShieldResponse(
                violation=violation(["scan_failed"], f"the code could not be scanned, so it is not passed: {exc}")
            )
        if not findings:
            return RunShieldResponse()
        return RunShieldResponse(violation=insecure(findings))

    # ------------------------------------------------------------------------------------------ helpers
    def _check_shield_type(self, shield_type: ShieldType) -> None:
        if shield_type != ShieldType.code_guard:
            raise NotSupportedError(
                f"inline::code-shield runs code_guard shields only, not {shield_type.value}; serve "
                f"{shield_type.value} from another safety provider",
                param="shield_type",
                provider=self.provider_id,
                code="unsupported_shield_type",
            )

    def _whole_messages(self, params: dict[str, Any]) -> bool:
        unknown = sorted(set(params) - set(PARAMS))
        if unknown:
            raise BadRequestError(
                f"code_guard shields take no param {', '.join(map(repr, unknown))}; their params are: "
                f"{', '.join(PARAMS)}",
                param=f"params.{unknown[0]}",
                provider=self.provider_id,
            )
        value = params.get("scan_whole_messages", self.config.scan_whole_messages)
        if not isinstance(value, bool):
            raise BadRequestError(
                f"params.scan_whole_messages must be true or false, got {value!r}",
                param="params.scan_whole_messages",
                provider=self.provider_id,
            )
        return value

    def _code(self, index: int, message: Message, texts: InlinedAttachments, whole: bool) -> Iterator[CodePiece]:
        if message.role == Role.system:
            return  # the operator's instructions, not the conversation
        where = f"messages[{index}]"
        has_content = isinstance(message.content, Attachment) or bool(message.content)
        text = texts(message.content, f"{where}.content") if has_content else ""
        if whole:
            yield CodePiece(f"{where}.content", None, text)
        else:
            for number, (tag, code) in enumerate(fenced_blocks(text), start=1):
                yield CodePiece(f"{where} code block {number} ({tag or 'no language'})", LANGUAGE_TAGS.get(tag), code)
        for at, call in enumerate(message.tool_calls):
            argument = call.arguments.get("code")
            if call.tool_name == "code_interpreter" and isinstance(argument, str):
                yield CodePiece(f"{where}.tool_calls[{at}].arguments.code", "python", argument)

    def _over_bounds(self, pieces: list[CodePiece]) -> SafetyViolation | None:
        if len(pieces) > self.config.max_blocks:
            return violation(
                ["too_many_code_blocks"],
                f"the messages hold {len(pieces)} pieces of code, more than the {self.config.max_blocks} scanned "
                "(max_blocks in the provider's config): not scanned, so not passed",
            )
        size = sum(len(piece.code) for piece in pieces)
        if size > self.config.max_code_chars:
            return violation(
                ["code_too_long"],
                f"the messages hold {size} characters of code, more than the {self.config.max_code_chars} scanned "
                "(max_code_chars in the provider's config): not scanned, so not passed",
            )
        return None


def insecure(findings: list[Finding]) -> SafetyViolation:
    """A violation naming each finding (its CWE id, or its rule where it has none), in the order found."""
    kinds = list(dict.fromkeys(f.cwe_id or f.pattern for f in findings))
    shown = [
        f"{f.where}, line {f.line if f.line is not None else '?'}: {f.cwe_id or 'no CWE'} {f.pattern}"
        + (f" ({f.description})" if f.description else "")
        for f in findings[:FINDINGS_SHOWN]
    ]
    more = len(findings) - len(shown)
    details = "insecure code: " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
    return violation(kinds, details)


async def build(config: CodeShieldConfig, context: ProviderContext) -> CodeShieldSafety:
    try:
        with warnings.catch_warnings():
            # codeshield finds semgrep's binary with importlib.resources.path, deprecated: not ours to fix.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"codeshield\.")
            from .code_scanner import CodeScanner
    except ImportError as exc:
        raise ImportError(
            f"provider inline::code-shield needs codeshield: {exc}; install 'llama-stack-runtime[code-shield]'"
        ) from exc
    except OSError as exc:
        # codeshield links semgrep's binary beside it in site-packages on first import.
        raise OSError(
            f"provider inline::code-shield: codeshield could not set up semgrep ({exc}); import codeshield once "
            "where site-packages is writable"
        ) from exc
    try:
        scanner = CodeScanner()
    except ScanFailed as exc:
        raise OSError(f"provider inline::code-shield cannot scan: {exc}") from exc
    return CodeShieldSafety(config, context, scanner)
