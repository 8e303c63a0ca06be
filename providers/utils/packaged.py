"""Model files shipped inside installed Python distributions: ``pypi:<distribution>[/<name>]`` references.

Used for GGUF files (``inline::llama-cpp``, ``inline::torch``) and sentence-transformers model directories
(``inline::sentence-transformers``). The distribution's file list is read, its package is never imported
here, and nothing is downloaded. Standard library only.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from llama_stack.apis.errors import BadRequestError, NotFoundError

PYPI_PREFIX = "pypi:"


@dataclass(frozen=True)
class PackagedReference:
    """A parsed ``pypi:<distribution>[/<name>]`` with its installed distribution."""

    reference: str
    name: str  # the distribution
    wanted: str  # the file or directory asked for ("" when the reference names none)
    dist: importlib.metadata.Distribution

    @property
    def label(self) -> str:
        return f"{self.dist.metadata['Name'] or self.name} {self.dist.version}"


def open_reference(reference: str, form: str) -> PackagedReference:
    """Parse the reference and find its distribution; ``form`` shows the expected shape in errors."""
    name, _, wanted = reference[len(PYPI_PREFIX) :].strip().partition("/")
    if not name:
        raise BadRequestError(f"{reference!r}: expected {form}")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise NotFoundError(
            f"{reference!r}: the Python distribution {name!r} is not installed; run `pip install {name}`"
        ) from None
    return PackagedReference(reference, name, wanted.rstrip("/"), dist)


def pick_one(
    ref: PackagedReference, candidates: list[PurePosixPath], kind: tuple[str, str], form: str
) -> PurePosixPath:
    """The one candidate the reference means: the one it names, or the only one there is.

    ``kind`` names what is looked for in errors, singular and plural (``("GGUF file", "GGUF files")``);
    ``form`` is how to name one (``pypi:<distribution>/<file>.gguf``).
    """
    one, several = kind
    listing = ", ".join(str(c) for c in candidates) or "none"
    if ref.wanted:
        candidates = [c for c in candidates if str(c) == ref.wanted or str(c).endswith("/" + ref.wanted)]
        if not candidates:
            raise NotFoundError(f"{ref.reference!r}: {ref.label} has no {one} {ref.wanted!r}; its {several}: {listing}")
    if not candidates:
        raise NotFoundError(f"{ref.reference!r}: {ref.label} contains no {one}")
    if len(candidates) > 1:
        raise BadRequestError(
            f"{ref.reference!r}: {ref.label} contains several {several} ({listing}); name one as {form}"
        )
    return candidates[0]


def locate(ref: PackagedReference, entry: PurePosixPath) -> Path:
    """Where a listed file or directory is on disk; a clear error when the installation lost it."""
    path = Path(str(ref.dist.locate_file(str(entry))))
    if not path.exists():
        raise NotFoundError(
            f"{ref.reference!r}: {path} is listed by {ref.label} but missing on disk; "
            f"reinstall it: pip install --force-reinstall {ref.name}"
        )
    return path


def files(ref: PackagedReference) -> list[PurePosixPath]:
    """The distribution's files (inside the installation: no ``..`` entries such as console scripts)."""
    return [PurePosixPath(f.as_posix()) for f in ref.dist.files or () if not f.as_posix().startswith("..")]
