"""checkpoints/step-<N>/: the adapter (peft's files) or the whole model (safetensors), its tokenizer and
checkpoint.json. Each is written into a hidden folder beside it and renamed into place when complete, so a
reader sees a whole checkpoint or none; the oldest go when more than ``keep`` are there."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .distributed import World, sharded_state_dict, unwrapped
from .spec import CHECKPOINT_INFO, CHECKPOINTS_DIR, CheckpointInfo, checkpoint_dirs, write_json

log = logging.getLogger(__name__)

_PARTIAL = ".step-"  # the prefix of a checkpoint being written (or left half-written by a killed process)


def clear_partial(job_dir: Path) -> None:
    """Remove what a killed process left half-written."""
    for folder in (job_dir / CHECKPOINTS_DIR).glob(f"{_PARTIAL}*"):
        shutil.rmtree(folder, ignore_errors=True)


def save(job_dir: Path, model: Any, tokenizer: Any, world: World, info: CheckpointInfo, keep: int) -> Path | None:
    """Every process calls this (FSDP gathers the weights from all); the main one writes. The folder, or None
    on the other processes."""
    state = sharded_state_dict(model, world)
    if not world.main:
        return None
    root = job_dir / CHECKPOINTS_DIR
    root.mkdir(exist_ok=True)
    final = root / f"step-{info.step}"
    if final.exists():  # an epoch that ends on a step the cadence saved already
        return final
    partial = Path(tempfile.mkdtemp(dir=root, prefix=f"{_PARTIAL}{info.step}."))
    try:
        inner = unwrapped(model)
        options: dict[str, Any] = {"safe_serialization": True}
        if state is not None:
            options["state_dict"] = _untied(inner, state)
        inner.save_pretrained(str(partial), **options)
        tokenizer.save_pretrained(str(partial))
        write_json(partial / CHECKPOINT_INFO, info)
        os.chmod(partial, 0o755)  # mkdtemp makes it private to this user
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("checkpoint %s (%s)", final.name, info.kind)
    if keep:
        for _, old in checkpoint_dirs(job_dir)[:-keep]:
            _remove(old)
    return final


def _untied(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A gathered state holds a tied output projection as a copy of the input embeddings: saved, it would take
    their room twice (transformers ties them again on load)."""
    config = getattr(model, "config", None)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or not getattr(config, "tie_word_embeddings", False):
        return state
    names = {module: name for name, module in model.named_modules()}
    key = f"{names[output]}.weight" if output in names else None
    return {name: tensor for name, tensor in state.items() if name != key}


def _remove(folder: Path) -> None:
    """Out of sight first (a rename), then deleted: a reader never lists a checkpoint that is half gone."""
    hidden = folder.with_name(f"{_PARTIAL}removed.{folder.name}")
    os.rename(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)
