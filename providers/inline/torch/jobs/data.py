"""A request's datasets as a job's training rows: which columns it trains on, and each row checked.

The dataset's declared columns say how rows become tokens (the :class:`DataSpec` formats):

* a ``dialog`` column (type dialog): ``dialog``, the loss on the assistant messages;
* text columns ``prompt`` (or ``input_query``) and ``completion`` (or ``expected_answer``, ``answer``):
  ``prompt_completion``, the loss on the completion;
* a single text column (or one named ``text``): ``text``, the loss on every token;
* ``chosen`` and ``rejected`` (text or dialog; a text ``prompt`` / ``input_query`` column beside them):
  ``preference``, for DPO.

Every row is checked here, before the job exists: a dialog's messages must be text (attachments and tool
calls cannot be trained on), the texts trained on must not be empty. Rows are written with only the columns
the job uses; dialogs as lists of ``{"role", "content"}`` messages whatever form they came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_stack.apis.datasets import Dataset
from llama_stack.apis.errors import BadRequestError

PROMPT_COLUMNS = ("prompt", "input_query")
COMPLETION_COLUMNS = ("completion", "expected_answer", "answer")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Columns:
    """A DataSpec's format and its role -> column mapping."""

    format: str
    columns: dict[str, str]


def _first(dataset: Dataset, names: tuple[str, ...], kind: str) -> str | None:
    return next((name for name in names if dataset.columns.get(name) == kind), None)


def _declared(dataset: Dataset) -> str:
    return ", ".join(f"{name} ({kind})" for name, kind in dataset.columns.items()) or "none"


def sft_columns(dataset: Dataset, where: str, provider: str) -> Columns:
    """What a supervised fine-tune trains on in ``dataset``; 400 listing what it could train on otherwise."""
    dialogs = [name for name, kind in dataset.columns.items() if kind == "dialog"]
    if "dialog" in dialogs or len(dialogs) == 1:
        return Columns("dialog", {"dialog": "dialog" if "dialog" in dialogs else dialogs[0]})
    prompt = _first(dataset, PROMPT_COLUMNS, "text")
    completion = _first(dataset, COMPLETION_COLUMNS, "text")
    if prompt and completion:
        return Columns("prompt_completion", {"prompt": prompt, "completion": completion})
    texts = [name for name, kind in dataset.columns.items() if kind == "text"]
    if len(texts) == 1 or "text" in texts:
        return Columns("text", {"text": "text" if "text" in texts else texts[0]})
    if "chosen" in dataset.columns and "rejected" in dataset.columns:
        advice = "chosen/rejected pairs train with /post_training/preference_optimize (DPO), not supervised fine-tuning"
    else:
        advice = (
            "a supervised fine-tune trains on a 'dialog' column (type dialog), text columns 'prompt' (or "
            "input_query) and 'completion' (or expected_answer, answer), or a single text column"
        )
    raise BadRequestError(
        f"{where}.columns: nothing to train on in columns {_declared(dataset)}: {advice}",
        provider=provider,
        param=f"{where}.columns",
    )


def preference_columns(dataset: Dataset, where: str, provider: str) -> Columns:
    """The chosen/rejected (and prompt) columns of a DPO dataset; 400 otherwise."""
    chosen, rejected = dataset.columns.get("chosen"), dataset.columns.get("rejected")
    if chosen not in ("text", "dialog") or rejected != chosen:
        raise BadRequestError(
            f"{where}.columns: DPO trains on columns 'chosen' and 'rejected', both text or both dialog (with a "
            f"text 'prompt' or 'input_query' column beside text ones); the dataset has {_declared(dataset)}",
            provider=provider,
            param=f"{where}.columns",
        )
    columns = {"chosen": "chosen", "rejected": "rejected"}
    prompt = _first(dataset, PROMPT_COLUMNS, "text")
    if prompt and chosen == "text":
        columns["prompt"] = prompt
    return Columns("preference", columns)


def check_same_columns(train: Columns, validation: Columns, where: str, provider: str) -> None:
    """A job reads its validation rows as it reads its training rows."""
    if validation != train:
        wanted = ", ".join(f"'{column}'" for column in train.columns.values())
        raise BadRequestError(
            f"{where}.columns: the validation dataset must have the columns the job trains on ({wanted}, as in "
            f"dataset: format {train.format}); it gives {', '.join(validation.columns.values())} ({validation.format})",
            provider=provider,
            param=f"{where}.columns",
        )


class _Rows:
    """Checks and normalizes rows, each problem a 400 naming the row, the column (and the message)."""

    def __init__(self, columns: Columns, declared: dict[str, str], where: str, provider: str):
        self.columns = columns
        self.declared = declared
        self.where = where
        self.provider = provider

    def bad(self, at: str, message: str) -> BadRequestError:
        return BadRequestError(f"{self.where} {at}: {message}", provider=self.provider, param=self.where)

    def row(self, number: int, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for role, column in self.columns.columns.items():
            at = f"row {number}, column {column!r}"
            value = row.get(column)
            if self.declared.get(column) == "dialog":
                out[column] = self.dialog(at, value, role)
            else:
                out[column] = self.text(at, value, may_be_empty=role == "prompt")
        return out

    def text(self, at: str, value: Any, *, may_be_empty: bool) -> str:
        if not isinstance(value, str):
            raise self.bad(at, f"expected text, got {_kind(value)}")
        if not may_be_empty and not value.strip():
            raise self.bad(at, "is empty: there is nothing to learn from it")
        return value

    def dialog(self, at: str, value: Any, role: str) -> list[dict[str, str]]:
        if isinstance(value, dict) and "message" in value:  # the API's Dialog: {message_history, message}
            value = [*(value.get("message_history") or []), value["message"]]
        if not isinstance(value, list) or not value:
            raise self.bad(at, f"expected a dialog (a non-empty list of messages), got {_kind(value)}")
        messages = [self.message(f"{at}, message {index}", message) for index, message in enumerate(value, 1)]
        if role == "dialog" and not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise self.bad(at, "has no assistant message with text: a fine-tune learns the assistant's answers")
        if role in ("chosen", "rejected") and messages[-1]["role"] != "assistant":
            raise self.bad(at, "must end with the assistant's answer (its earlier messages are the prompt)")
        return messages

    def message(self, at: str, message: Any) -> dict[str, str]:
        if not isinstance(message, dict):
            raise self.bad(at, f"expected a message object, got {_kind(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise self.bad(at, f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if message.get("tool_calls") or message.get("tool_responses"):
            raise self.bad(at, "tool calls and tool responses cannot be trained on here: give their text as content")
        return {"role": role, "content": self.content(at, message.get("content"))}

    def content(self, at: str, content: Any) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, list) and all(isinstance(part, str) for part in content):
            return "".join(content)
        raise self.bad(
            at, f"only text can be trained on; the content is {_kind(content)} (an attachment, image or other media)"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null or missing)"
    if isinstance(value, list):
        return "a list holding " + ", ".join(sorted({_kind(v) for v in value})) if value else "an empty list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def training_rows(
    rows: list[dict[str, Any]], columns: Columns, dataset: Dataset, where: str, provider: str
) -> list[dict[str, Any]]:
    """``rows`` checked and cut down to the columns the job reads (rows numbered from 1 in errors)."""
    checker = _Rows(columns, dict(dataset.columns), where, provider)
    return [checker.row(number, row) for number, row in enumerate(rows, 1)]
