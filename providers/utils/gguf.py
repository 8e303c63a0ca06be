"""Where a model's GGUF file is: a filesystem path, or a file inside an installed Python distribution.

Shared by the providers that load GGUF files (``inline::llama-cpp``, ``inline::torch``). Standard library
only, so that it can be used (and tested) without llama-cpp-python, torch or gguf.
"""

from __future__ import annotations

from pathlib import Path

from llama_stack.apis.errors import NotFoundError

from .packaged import PYPI_PREFIX, files, locate, open_reference, pick_one

__all__ = ["PYPI_PREFIX", "resolve_gguf"]


def resolve_gguf(reference: str) -> Path:
    """The GGUF file a ``provider_model_id`` names: a path (``~`` expanded) or ``pypi:<dist>[/<file>]``.

    ``pypi:`` looks the file up in the installed distribution's file list; the package is never
    imported and nothing is downloaded.
    """
    if reference.startswith(PYPI_PREFIX):
        return _gguf_in_distribution(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        raise NotFoundError(f"{str(path)!r} is a directory, not a .gguf file")
    if not path.is_file():
        raise NotFoundError(f"GGUF file {str(path)!r} does not exist")
    return path


def _gguf_in_distribution(reference: str) -> Path:
    form = "pypi:<distribution>/<file>.gguf"
    ref = open_reference(reference, f"pypi:<distribution> or {form}")
    ggufs = [f for f in files(ref) if f.name.lower().endswith(".gguf")]
    return locate(ref, pick_one(ref, ggufs, ("GGUF file", "GGUF files"), form))
