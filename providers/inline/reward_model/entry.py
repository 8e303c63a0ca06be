"""A reward model entry checked against its folder before anything is loaded (no torch here).

``provider_model_id`` names a local folder: absolute, inside the provider's ``model_roots`` when those are set,
holding ``config.json``, safetensors weights (never a pickle: unpickling runs code) and the tokenizer. The
labels come from ``config.json``: one label, and the score is its logit; several, and the score is the
probability of ``metadata.positive_label`` (label 1 of two by default). Everything wrong here fails the start
with a message naming the model; what only loading can tell (a broken weights file) fails the model later.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_stack.apis.errors import BadRequestError
from llama_stack.apis.inspect import Model

from .config import RewardModelConfig

# Weights files that are pickles: loading one may run any code it carries.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# The metadata keys a reward model entry may set.
METADATA_KEYS = ("positive_label", "max_length")
_NO_LIMIT = 10**9  # transformers writes a huge model_max_length for "no limit"
# Where config.json keeps the model's longest input, by architecture (Llama's, GPT-2's, others').
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class RewardModelEntry:
    """What scoring needs to know about one model entry, read from its folder's files."""

    model_id: str
    folder: Path
    num_labels: int
    # The class whose probability is the score; None when the model has one label and its logit is the score.
    positive_label: int | None
    max_length: int  # tokens per (dialog, generation) pair, after truncation

    def describe_score(self) -> str:
        if self.positive_label is None:
            return "the logit of its single label"
        return f"the probability of label {self.positive_label} of {self.num_labels}"


def read_entry(model: Model, config: RewardModelConfig, provider_id: str) -> RewardModelEntry:
    """The entry checked against its folder; a 400 naming the model and the field otherwise."""

    def bad(message: str, param: str) -> BadRequestError:
        return BadRequestError(f"model {model.model_id!r}: {message}", provider=provider_id, param=param)

    if model.model_type != "reward":
        raise bad(
            f"{provider_id} serves reward models only; set model_type: reward (it is {model.model_type!r})",
            "model_type",
        )
    unknown = sorted(set(model.metadata) - set(METADATA_KEYS))
    if unknown:
        raise bad(
            f"unknown metadata key(s) {', '.join(map(repr, unknown))}; a reward model entry may set "
            f"{', '.join(METADATA_KEYS)}",
            f"metadata.{unknown[0]}",
        )
    folder = _folder(model.provider_model_id or model.model_id, config, bad)
    settings = _json(folder / "config.json", bad)
    num_labels = _num_labels(settings)
    positive = _positive_label(model.metadata.get("positive_label"), settings, num_labels, bad)
    return RewardModelEntry(
        model_id=model.model_id,
        folder=folder,
        num_labels=num_labels,
        positive_label=positive,
        max_length=_max_length(model.metadata.get("max_length"), config.max_length, folder, settings, bad),
    )


def _folder(reference: str, config: RewardModelConfig, bad: Any) -> Path:
    given = Path(reference).expanduser()
    if not given.is_absolute():
        raise bad(
            f"provider_model_id {reference!r} must be an absolute path to a local model folder (models are "
            "never downloaded)",
            "provider_model_id",
        )
    folder = given.resolve()
    if config.model_roots is not None:
        roots = [root.expanduser().resolve() for root in config.model_roots]
        if not any(folder == root or folder.is_relative_to(root) for root in roots):
            listed = ", ".join(repr(str(root)) for root in roots) or "none"
            raise bad(
                f"provider_model_id {reference!r} is outside the provider's model_roots ({listed})", "provider_model_id"
            )
    if not folder.exists():
        raise bad(
            f"model folder {str(folder)!r} does not exist (models are never downloaded: name a folder "
            "holding a transformers sequence-classification model)",
            "provider_model_id",
        )
    if not folder.is_dir():
        raise bad(f"{str(folder)!r} is a file; name the model folder holding it", "provider_model_id")
    if not (folder / "config.json").is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:20]) or "nothing"
        raise bad(
            f"{str(folder)!r} has no config.json, so it is not a transformers model folder (it holds: {present})",
            "provider_model_id",
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise bad(
                f"{str(folder)!r} holds its weights as pickles only ({', '.join(pickles[:5])}), which are "
                "refused: loading a pickle can run any code it carries. Save the model with safetensors "
                "(save_pretrained(..., safe_serialization=True))",
                "provider_model_id",
            )
        raise bad(f"{str(folder)!r} holds no .safetensors weights", "provider_model_id")
    return folder


def _json(file: Path, bad: Any) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise bad(f"cannot read {str(file)!r}: {exc}", "provider_model_id") from None
    if not isinstance(value, dict):
        raise bad(f"{str(file)!r} is not a JSON object", "provider_model_id")
    return value


def _num_labels(settings: dict[str, Any]) -> int:
    """As transformers counts them: id2label's entries, else num_labels, else its default of two."""
    id2label = settings.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    count = settings.get("num_labels")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 2


def _label_names(settings: dict[str, Any], num_labels: int) -> dict[str, int]:
    """Label name -> index; without id2label, transformers' default names (LABEL_0, LABEL_1, ...)."""
    id2label = settings.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return {f"LABEL_{index}": index for index in range(num_labels)}
    names: dict[str, int] = {}
    for index, name in id2label.items():
        try:
            names[str(name)] = int(index)
        except (TypeError, ValueError):
            continue
    return names


def _positive_label(wanted: Any, settings: dict[str, Any], num_labels: int, bad: Any) -> int | None:
    param = "metadata.positive_label"
    if num_labels == 1:
        if wanted not in (None, 0):
            raise bad(f"positive_label {wanted!r}: the model has one label, whose logit is the score", param)
        return None
    names = _label_names(settings, num_labels)
    if wanted is None:
        if num_labels == 2:
            return 1
        listed = ", ".join(f"{index} ({name})" for name, index in sorted(names.items(), key=lambda kv: kv[1]))
        raise bad(
            f"the model has {num_labels} labels ({listed or 'unnamed'}); set metadata.positive_label to the "
            "one whose probability is the score",
            param,
        )
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if 0 <= wanted < num_labels:
            return wanted
        raise bad(f"positive_label {wanted} is not a label of the model (0 to {num_labels - 1})", param)
    if isinstance(wanted, str) and wanted in names:
        return names[wanted]
    raise bad(
        f"positive_label {wanted!r} is not a label of the model (its labels: "
        f"{', '.join(map(repr, sorted(names, key=names.__getitem__))) or 'unnamed'}; or give an index)",
        param,
    )


def _max_length(wanted: Any, default: int, folder: Path, settings: dict[str, Any], bad: Any) -> int:
    if wanted is not None and (not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1):
        raise bad(f"max_length {wanted!r} must be a positive whole number of tokens", "metadata.max_length")
    limit = model_limit(folder, settings)
    length = wanted if wanted is not None else default
    return min(length, limit) if limit is not None else length


def model_limit(folder: Path, settings: dict[str, Any]) -> int | None:
    """The longest input the model reads, from its files: its positions, or the tokenizer's limit."""
    nested = settings.get("text_config")  # a multimodal model's text part holds its positions
    text: dict[str, Any] = nested if isinstance(nested, dict) else settings
    limits = [text.get(key) for key in _POSITION_KEYS]
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no tokenizer limit is no limit
        limits.append(
            json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
        )
    found = [n for n in limits if isinstance(n, int) and not isinstance(n, bool) and 0 < n < _NO_LIMIT]
    return min(found, default=None)
