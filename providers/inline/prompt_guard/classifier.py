"""The Prompt Guard classifier: a transformers sequence-classification model read from a local directory.

Imported only by the provider's factory, on a worker thread: torch and transformers take seconds to import
and a distribution that does not select ``inline::prompt-guard`` must not pay for them.

Every method here blocks (tokenizing, forward passes); the provider calls them off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from llama_stack.config import ConfigError

# Prompt-Guard-86M's labels; a model without all three cannot be read as a prompt guard.
LABELS = ("BENIGN", "INJECTION", "JAILBREAK")
# A tokenizer that knows no input limit reports this sentinel (transformers' VERY_LARGE_INTEGER) or near it.
_NO_LIMIT = 1_000_000


@dataclass(frozen=True)
class Window:
    """Where a window lies in its text (characters), and each label's probability for it."""

    text_index: int
    start_char: int
    end_char: int
    scores: dict[str, float]


class PromptGuardClassifier:
    """A loaded model and tokenizer, with how texts are cut into windows."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, label_index: dict[str, int], path: Path):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.label_index = label_index
        self.path = path

    def windows(self, texts: list[str], window_tokens: int, overlap: int) -> list[dict[str, Any]]:
        """Each text tokenized and cut into windows of ``window_tokens`` (special tokens included) that share
        ``overlap`` tokens with the previous one, in text order."""
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=window_tokens,
            stride=overlap,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            verbose=False,  # long texts are expected: they are windowed, not truncated
        )
        windows = []
        for i, ids in enumerate(encoded["input_ids"]):
            spans = [span for span in encoded["offset_mapping"][i] if span[1] > span[0]]  # special tokens have none
            windows.append(
                {
                    "input_ids": ids,
                    "text_index": int(encoded["overflow_to_sample_mapping"][i]),
                    "start_char": spans[0][0] if spans else 0,
                    "end_char": spans[-1][1] if spans else 0,
                }
            )
        return windows

    def classify(self, windows: list[dict[str, Any]]) -> list[Window]:
        """One forward pass over the windows: each label's probability (softmax over the model's labels)."""
        batch = self.tokenizer.pad([{"input_ids": w["input_ids"]} for w in windows], return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            ).logits
        probs = logits.float().softmax(dim=-1).cpu().tolist()
        return [
            Window(
                text_index=w["text_index"],
                start_char=w["start_char"],
                end_char=w["end_char"],
                scores={label: float(p[index]) for label, index in self.label_index.items()},
            )
            for w, p in zip(windows, probs, strict=True)
        ]


def load_classifier(path: Path, device_name: str, window_tokens: int) -> PromptGuardClassifier:
    """Read the model at ``path`` onto ``device_name``; a directory that is not a Prompt Guard model, or a
    window longer than the model reads, fails the start naming the path."""
    folder = path.expanduser()
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise ConfigError(
            f"model_path {str(folder)!r} {what}; point it at a downloaded Prompt-Guard-86M "
            "(a directory with config.json, the weights and tokenizer.json)"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:  # unreadable JSON, an unknown model_type
        raise ConfigError(f"cannot read the model's config.json at {str(folder)!r}: {exc}") from exc
    label_index = _label_index(config, folder)
    _check_window(config, folder, window_tokens)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # float32 whatever the checkpoint holds: an 86M-parameter model is cheap at full precision, and its scores
        # are compared with thresholds.
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the model at {str(folder)!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        # Windows with character offsets come from the tokenizers library (tokenizer.json).
        raise ConfigError(
            f"the model at {str(folder)!r} has no fast tokenizer (tokenizer.json), which windowing long inputs needs"
        )
    device = resolve_device(device_name)
    model.to(device)
    model.eval()
    return PromptGuardClassifier(model, tokenizer, device, label_index, folder)


def _label_index(config: Any, folder: Path) -> dict[str, int]:
    labels = {str(name).upper(): int(index) for index, name in (getattr(config, "id2label", None) or {}).items()}
    missing = [label for label in LABELS if label not in labels]
    if missing:
        has = ", ".join(str(name) for _, name in sorted((config.id2label or {}).items())) or "none"
        raise ConfigError(
            f"the model at {str(folder)!r} has the labels {has}, not "
            f"{', '.join(LABELS)} (Prompt-Guard-86M's); missing: {', '.join(missing)}"
        )
    return {label: labels[label] for label in LABELS}


def _check_window(config: Any, folder: Path, window_tokens: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT and window_tokens > limit:
        raise ConfigError(
            f"window_tokens ({window_tokens}) is longer than the model at {str(folder)!r} "
            f"reads ({limit} tokens); set window_tokens to at most {limit}"
        )


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA GPU when torch sees one, else the CPU; a GPU that is not there fails the start."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                f"(torch {torch.__version__}); use 'auto' or 'cpu'"
            )
    return torch.device(device)
