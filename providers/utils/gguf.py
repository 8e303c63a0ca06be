"""Where a model's GGUF file is: a filesystem path, or a file inside an installed Python distribution.

Shared by the providers that load GGUF files (``inline::llama-cpp``, ``inline::torch``). Standard library
only, so that it can be used (and tested) without llama-cpp-python, torch or gguf.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from llama_stack.apis.errors import BadRequestError, NotFoundError

PYPI_PREFIX = "pypi:"


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
    name, _, wanted = reference[len(PYPI_PREFIX) :].strip().partition("/")
    if not name:
        raise BadRequestError(f"{reference!r}: expected pypi:<distribution> or pypi:<distribution>/<file>.gguf")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise NotFoundError(
            f"{reference!r}: the Python distribution {name!r} is not installed; run `pip install {name}`"
        ) from None
    label = f"{dist.metadata['Name'] or name} {dist.version}"
    ggufs = [f for f in dist.files or () if f.name.lower().endswith(".gguf")]
    listing = ", ".join(f.as_posix() for f in ggufs) or "none"
    if wanted:
        matches = [f for f in ggufs if f.as_posix() == wanted or f.as_posix().endswith("/" + wanted)]
        if not matches:
            raise NotFoundError(f"{reference!r}: {label} has no GGUF file {wanted!r}; its GGUF files: {listing}")
    else:
        matches = ggufs
        if not matches:
            raise NotFoundError(f"{reference!r}: {label} contains no .gguf file")
    if len(matches) > 1:
        raise BadRequestError(
            f"{reference!r}: {label} contains several GGUF files ({listing}); "
            f"name one as pypi:{name}/<file>.gguf"
        )
    path = Path(dist.locate_file(matches[0]))
    if not path.is_file():
        raise NotFoundError(
            f"{reference!r}: {path} is listed by {label} but missing on disk; "
            f"reinstall it: pip install --force-reinstall {name}"
        )
    return path
