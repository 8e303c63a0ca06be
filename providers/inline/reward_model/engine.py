"""A reward model loaded by transformers, and how it scores (dialog, generation) pairs. Imports torch: only the
provider's loading thread and its models' worker threads use this module.

A pair is its messages (the dialog, then the generation as the assistant's answer) written out by the
tokenizer's chat template, or, for a tokenizer without one, as ``role: text`` turns separated by blank lines
(with the tokenizer's special tokens added, as for plain text). A pair longer than the model reads keeps its
last tokens: the pooled logit is read at the last token, so the generation being scored must stay.

Pairs run in batches sorted by length (the longest first, so that running out of memory happens at once),
right-padded with the model's pad token and an attention mask: a causal model's pooled token then sees
exactly what it sees unpadded, at the same positions, so batching does not change a score (left padding
would shift every position, which changes the scores of models with absolute positions, GPT-2's say). A model without a pad token pools at the last position whatever it holds (and
transformers refuses to batch it), so it reads one pair per forward pass.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jinja2
import torch

from llama_stack.apis.errors import BadRequestError
from llama_stack.providers.utils.model_worker import Cancelled, Job

from .entry import RewardModelEntry
from .pairs import Pair

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU; a GPU that is not there fails the load."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) (torch {torch.__version__}); "
                "use 'auto' or 'cpu'"
            )
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on the CPU; bfloat16 on a CUDA GPU that supports it, else float16."""
    if name != "auto":
        dtype: torch.dtype = getattr(torch, name)
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class RewardEngine:
    """One loaded reward model. ``score`` runs on the model's worker thread, one request at a time."""

    def __init__(self, entry: RewardModelEntry, model: Any, tokenizer: Any, device: torch.device):
        self.entry = entry
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        # The pooling reads the last token that is not this one: padding must use it, and none means no padding.
        self.pad_id: int | None = model.config.get_text_config().pad_token_id

    def describe(self) -> str:
        template = "its chat template" if self.chat_template else "role: text turns (it has no chat template)"
        return (
            f"{self.model.config.model_type} on {self.device} ({self.model.dtype}), score {self.entry.describe_score()}, "
            f"at most {self.entry.max_length} tokens per pair, written with {template}"
        )

    def score(self, job: Job, pairs: list[Pair], batch_size: int) -> list[float]:
        """Each pair's score, in order; stops between batches once the job is cancelled."""
        rows = [self.encode(pair) for pair in pairs]
        scores: list[float] = [0.0] * len(rows)
        for batch in self.batches(rows, batch_size):
            if job.cancelled:
                raise Cancelled()
            for index, value in zip(batch, self.forward([rows[i] for i in batch]), strict=True):
                scores[index] = value
        return scores

    def encode(self, pair: Pair) -> list[int]:
        """The pair's tokens, its oldest ones dropped past ``max_length``."""
        if self.chat_template:
            try:
                text = self.tokenizer.apply_chat_template(pair.messages, tokenize=False, add_generation_prompt=False)
            except (
                jinja2.TemplateError,
                ValueError,
            ) as exc:  # templates refuse some dialogs (roles that do not alternate)
                raise BadRequestError(
                    f"{pair.where}: the chat template of model {self.entry.model_id!r} refused the dialog: {exc}",
                    param=pair.where,
                ) from exc
            ids = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in pair.messages)
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not ids:
            raise BadRequestError(f"{pair.where}: the dialog and generation make no tokens", param=pair.where)
        return list(ids[-self.entry.max_length :])

    def batches(self, rows: list[list[int]], batch_size: int) -> list[list[int]]:
        """Row indices in batches of at most ``batch_size`` (one without a pad token), longest rows first."""
        size = batch_size if self.pad_id is not None else 1
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        return [order[start : start + size] for start in range(0, len(order), size)]

    def forward(self, rows: list[list[int]]) -> list[float]:
        """The scores of one batch: right-padded, masked, pooled by the model at each row's last token."""
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id if self.pad_id is not None else 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        positive = self.entry.positive_label
        values = logits[:, 0] if positive is None else logits.softmax(dim=-1)[:, positive]
        return [float(v) for v in values.cpu().tolist()]

    def close(self) -> None:
        on_gpu = self.device.type == "cuda"
        del self.model
        if on_gpu:
            torch.cuda.empty_cache()


def load_engine(entry: RewardModelEntry, device_name: str, dtype_name: str) -> RewardEngine:
    """Read the entry's folder (safetensors only, local files only, no code from the folder) onto the device."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder: Path = entry.folder
    device = resolve_device(device_name)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=False,
        dtype=resolve_dtype(dtype_name, device),
    )
    if model.config.num_labels != entry.num_labels:
        raise RuntimeError(
            f"the model has {model.config.num_labels} labels once loaded, its config.json {entry.num_labels}"
        )
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < entry.max_length:  # a limit config.json keeps under another name
        log.warning("model %s reads at most %d tokens: pairs are cut to that", entry.model_id, limit)
        entry = dataclasses.replace(entry, max_length=limit)
    model.to(device)
    model.eval()
    return RewardEngine(entry, model, tokenizer, device)
