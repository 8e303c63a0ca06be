"""A job's rows as token ids: which tokens the model reads, which carry the loss, and padded micro-batches.

Each format of :class:`~.spec.DataSpec` becomes :class:`Example` s (SFT) or :class:`Pair` s (DPO):

* ``dialog``: the conversation through the tokenizer's chat template; the loss is on each assistant message
  (its text and the template's end-of-turn tokens), never on the system/user turns or the assistant headers.
  The assistant spans are found by rendering growing prefixes of the conversation: the prompt up to a message
  (with the generation prompt) and the prompt with it; each piece is tokenized on its own, so the prompt's
  tokens are the ones inference feeds the model.
* ``prompt_completion``: prompt then completion (then end-of-text); the loss is on the completion. A prompt
  that is a dialog goes through the chat template with the completion as the assistant's answer.
* ``text``: the loss is on every token.
* ``preference``: a prompt and two answers; the tokens of the answer are the ones DPO scores.

Rows longer than ``max_seq_len`` lose their end.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .spec import DataSpec

T = TypeVar("T")
IGNORE = -100  # the label of a token that carries no loss (cross_entropy's ignore_index)
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "tool", "tool": "tool"}


class DataError(ValueError):
    """A row the job cannot train on: says which file, row and column, and what was expected."""


@dataclass
class Example:
    """One token sequence: ``labels[i]`` is ``input_ids[i]`` where token i carries the loss, else IGNORE."""

    index: int
    input_ids: list[int]
    labels: list[int]
    filler: bool = False  # a loss-free copy that evens out the processes' shares of a batch

    @property
    def loss_tokens(self) -> int:
        """Tokens predicted with a loss (the first token is never predicted)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)

    @property
    def tokens(self) -> int:
        """Tokens of the row's data (none for a filler)."""
        return 0 if self.filler else len(self.input_ids)

    def without_loss(self) -> Example:
        """The same tokens carrying no loss: fills a process's share of a batch so every process runs alike."""
        return Example(self.index, self.input_ids, [IGNORE] * len(self.labels), filler=True)


@dataclass
class Pair:
    """A preference pair: the same prompt with the chosen and the rejected answer."""

    index: int
    chosen: Example
    rejected: Example
    filler: bool = False
    # Log-probabilities of each answer under the reference model (set before training starts).
    reference: tuple[float, float] | None = None

    @property
    def loss_tokens(self) -> int:
        return self.chosen.loss_tokens + self.rejected.loss_tokens

    @property
    def tokens(self) -> int:
        return 0 if self.filler else len(self.chosen.input_ids) + len(self.rejected.input_ids)

    def without_loss(self) -> Pair:
        return Pair(self.index, self.chosen, self.rejected, filler=True, reference=self.reference)


Item = Example | Pair


@dataclass
class Rows:
    """A file's examples, and what encoding them found worth telling."""

    items: list[Any]
    truncated: int = 0
    without_loss: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


# ----------------------------------------------------------------------------------------------------
# Reading


def read_rows(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped)."""
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path.name} line {number}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise DataError(f"{path.name} line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path.name} holds no rows")
    return rows


# ----------------------------------------------------------------------------------------------------
# Encoding


class Encoder:
    """Turns rows of one :class:`DataSpec` into examples for one tokenizer."""

    def __init__(self, tokenizer: Any, data: DataSpec, max_seq_len: int):
        self.tokenizer = tokenizer
        self.data = data
        self.max_seq_len = max_seq_len
        self.eos_id: int | None = tokenizer.eos_token_id

    def encode_file(self, path: Path) -> Rows:
        rows = read_rows(path)
        encoded = Rows([])
        for index, row in enumerate(rows):
            where = f"{path.name} row {index + 1}"
            item = self.encode(index, row, where)
            encoded.items.append(item)
            examples = [item.chosen, item.rejected] if isinstance(item, Pair) else [item]
            if any(len(example.input_ids) > self.max_seq_len for example in examples):
                encoded.truncated += 1
                for example in examples:
                    del example.input_ids[self.max_seq_len :], example.labels[self.max_seq_len :]
            if any(example.loss_tokens == 0 for example in examples):
                encoded.without_loss.append(index + 1)
        return encoded

    def encode(self, index: int, row: dict[str, Any], where: str) -> Item:
        columns = self.data.columns
        kind = self.data.format
        if kind == "text":
            text = _text(row, columns, "text", where)
            ids = self._plain(text, special=True) + self._eos()
            return Example(index, ids, list(ids))
        if kind == "prompt_completion":
            prompt = _value(row, columns, "prompt", where)
            completion = _text(row, columns, "completion", where)
            return self._answered(index, prompt, completion, where, f"{where} column {columns['prompt']!r}")
        if kind == "dialog":
            messages = _messages(_value(row, columns, "dialog", where), f"{where} column {columns['dialog']!r}")
            if not any(message["role"] == "assistant" for message in messages):
                raise DataError(f"{where} column {columns['dialog']!r}: no assistant message to learn from")
            ids, labels = self._dialog(messages, last_only=False, where=f"{where} column {columns['dialog']!r}")
            return Example(index, ids, labels)
        if kind == "preference":
            prompt = _value(row, columns, "prompt", where) if "prompt" in columns else None
            chosen = self._preferred(index, prompt, _value(row, columns, "chosen", where), where, columns["chosen"])
            rejected = self._preferred(
                index, prompt, _value(row, columns, "rejected", where), where, columns["rejected"]
            )
            return Pair(index, chosen, rejected)
        raise DataError(f"unknown data format {kind!r}")

    def _preferred(self, index: int, prompt: Any, answer: Any, where: str, column: str) -> Example:
        at = f"{where} column {column!r}"
        if isinstance(answer, list):  # a dialog: its last message is the answer, the rest (after prompt) its prompt
            before = [] if prompt is None else _as_dialog(prompt, f"{where} column {self.data.columns['prompt']!r}")
            messages = before + _messages(answer, at)
            if messages[-1]["role"] != "assistant":
                raise DataError(f"{at}: the last message must be the assistant's answer, not {messages[-1]['role']!r}")
            ids, labels = self._dialog(messages, last_only=True, where=at)
            return Example(index, ids, labels)
        if not isinstance(answer, str):
            raise DataError(f"{at}: expected text or a dialog (a list of messages), got {type(answer).__name__}")
        return self._answered(index, "" if prompt is None else prompt, answer, where, at)

    def _answered(self, index: int, prompt: Any, answer: str, where: str, at: str) -> Example:
        """A prompt (text, or a dialog the answer continues) and an answer carrying the loss."""
        if isinstance(prompt, list):
            messages = [*_messages(prompt, at), {"role": "assistant", "content": answer}]
            ids, labels = self._dialog(messages, last_only=True, where=at)
            return Example(index, ids, labels)
        if not isinstance(prompt, str):
            raise DataError(f"{at}: expected text or a dialog (a list of messages), got {type(prompt).__name__}")
        head = self._plain(prompt, special=True)
        tail = self._plain(answer, special=False) + self._eos()
        return Example(index, head + tail, [IGNORE] * len(head) + tail)

    def _plain(self, text: str, special: bool) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return list(ids)

    def _eos(self) -> list[int]:
        return [] if self.eos_id is None else [self.eos_id]

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool, where: str) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                f"{where}: the model's tokenizer has no chat template, which dialogs need "
                "(give text or prompt_completion rows instead)"
            )
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja raises its own errors for what a template refuses
            raise DataError(f"{where}: the chat template refused the dialog: {type(exc).__name__}: {exc}") from exc
        return str(text)

    def _dialog(self, messages: list[dict[str, Any]], last_only: bool, where: str) -> tuple[list[int], list[int]]:
        """Tokens of the conversation up to its last assistant message; loss on the assistant messages (or on
        the last one only)."""
        answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        if last_only:
            answers = answers[-1:]
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for i in answers:
            head = self._render(messages[:i], generation_prompt=True, where=where)
            whole = self._render(messages[: i + 1], generation_prompt=False, where=where)
            if not head.startswith(done) or not whole.startswith(head):
                raise DataError(
                    f"{where}: the chat template renders the conversation differently once message {i + 1} "
                    "follows, so the assistant's tokens cannot be told apart"
                )
            prompt = self._plain(head[len(done) :], special=False)
            answer = self._plain(whole[len(head) :], special=False)
            ids += prompt + answer
            labels += [IGNORE] * len(prompt) + answer
            done = whole
        return ids, labels


def _value(row: dict[str, Any], columns: dict[str, str], role: str, where: str) -> Any:
    column = columns.get(role)
    if column is None:
        raise DataError(f"the job names no column for {role!r} (columns: {columns})")
    if column not in row:
        raise DataError(f"{where}: no column {column!r} (the row has {sorted(row)})")
    return row[column]


def _text(row: dict[str, Any], columns: dict[str, str], role: str, where: str) -> str:
    value = _value(row, columns, role, where)
    if not isinstance(value, str):
        raise DataError(f"{where} column {columns[role]!r}: expected text, got {type(value).__name__}")
    return value


def _as_dialog(prompt: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return _messages(prompt, where)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    """A dialog's messages as chat templates take them: role and text content (other keys kept)."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a dialog (a non-empty list of messages), got {type(value).__name__}")
    messages = []
    for number, message in enumerate(value, start=1):
        at = f"{where} message {number}"
        if not isinstance(message, dict):
            raise DataError(f"{at}: expected an object with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{at}: role {role!r} is not one of {sorted(ROLES)}")
        normalized = {key: item for key, item in message.items() if key not in ("role", "content", "stop_reason")}
        normalized["role"] = ROLES[role]
        normalized["content"] = _content_text(message.get("content"), at)
        messages.append(normalized)
    return messages


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list):
        texts = []
        for item in content:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                texts.append(item["text"])
            else:
                kind = item.get("type") if isinstance(item, dict) else type(item).__name__
                raise DataError(f"{where}: content of type {kind!r} cannot be trained on (text only)")
        return "".join(texts)
    raise DataError(f"{where}: expected text content, got {type(content).__name__}")


# ----------------------------------------------------------------------------------------------------
# Batches


def epoch_batches(count: int, batch_size: int, shuffle: bool, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each optimizer step of an epoch (the last batch may be short); the same for every
    process, so that each can take its own share."""
    order = list(range(count))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """This process's share of a global batch, filled up with loss-free copies so that every process has
    as many rows (each runs the same forward and backward passes, which DDP and FSDP require)."""
    share = list(items[rank::world_size])
    size = -(-len(items) // world_size)
    while len(share) < size:
        share.append(items[len(share) % len(items)].without_loss())
    return share


def micro_batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        """Tokens the batch holds (padding excluded)."""
        return int(self.attention_mask.sum())


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    """Right-padded tensors of a micro-batch; padding carries no loss and no attention."""
    length = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return Batch(ids.to(device), mask.to(device), labels.to(device))
