"""inline::reward-model: reward scoring by sequence-classification reward models in the server process.

Each ``models:`` entry with ``model_type: reward`` naming this provider is a reward model read from the local
folder its ``provider_model_id`` names. The entry is checked when the stack starts (:mod:`.entry`: a bad one
fails the start); the model then loads in the background by default (``load_in_background``): until it is
loaded its requests answer 503 with Retry-After and ``model_status`` says ``loading``; one that fails to load
says ``failed`` and its requests answer 502 with the reason (it is not retried).

A request's generations are scored on the model's own worker thread (never on the event loop), one request
at a time per model, at most ``max_queue`` waiting; each is read with its dialog as the assistant's answer
(:mod:`.pairs`), tokenized and run in batches (:mod:`.engine`). The sizes are bounded before any work: the
number of generations (``max_pairs``), then the characters read (``max_request_chars``), then each pair's
tokens (``max_length``, by truncation).

The model runs in this process, as inline::sentence-transformers' do: a crash in native code (torch) ends
the server with it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from llama_stack.apis.common import Content
from llama_stack.apis.errors import (
    BadRequestError,
    ConflictError,
    LlamaStackError,
    ProviderError,
)
from llama_stack.apis.inspect import Model
from llama_stack.apis.reward_scoring import (
    KScoredPromptGenerations,
    RewardScoringRequest,
    RewardScoringResponse,
    ScoredMessage,
)
from llama_stack.plugins import ProviderContext
from llama_stack.providers.utils.background_load import BackgroundLoad, LoadStatus
from llama_stack.providers.utils.inference.attachments import AttachmentInliner, located, message_contents
from llama_stack.providers.utils.inference.dialog import iter_messages
from llama_stack.providers.utils.inference.tool_calls.formats import tool_format_for
from llama_stack.providers.utils.model_worker import ModelWorker, guarded, served_slot

from . import PROVIDER_TYPE
from .config import RewardModelConfig
from .entry import RewardModelEntry, read_entry
from .pairs import check_chars, count_pairs, request_pairs

if TYPE_CHECKING:
    from .engine import RewardEngine

log = logging.getLogger(__name__)

# Checked to be installed when the provider is built (without importing them), so a missing one fails the start.
_LIBRARIES = ("torch", "transformers")


async def build(config: RewardModelConfig, context: ProviderContext) -> RewardModelScoring:
    missing = [name for name in _LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"provider {PROVIDER_TYPE} needs {missing[0]!r}, which is not installed: pip install "
            "'llama-stack-runtime[torch]'"
        )
    return RewardModelScoring(config, context.provider_id)


@dataclass
class _Slot:
    model: Model
    reference: str
    entry: RewardModelEntry
    load: BackgroundLoad[RewardEngine]
    worker: ModelWorker


class RewardModelScoring:
    """The RewardScoring API over local reward models; models come in through ``register_model``."""

    def __init__(self, config: RewardModelConfig, provider_id: str):
        self.config = config
        self.provider_id = provider_id
        self._slots: dict[str, _Slot] = {}
        self._inliner = AttachmentInliner(config.attachments)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def register_model(self, model: Model) -> Model:
        """Check the entry against its folder (a 400 naming the model fails the start), then start loading it
        (in the background unless ``load_in_background`` is false, when this waits for it). The model comes back
        with the tokens it reads per pair as its context length."""
        reference = model.provider_model_id or model.model_id
        existing = self._slots.get(model.model_id)
        if existing is not None:
            if existing.reference == reference:
                return existing.model
            raise ConflictError(
                f"model {model.model_id!r} is already registered with {existing.reference!r}", provider=self.provider_id
            )
        entry = read_entry(model, self.config, self.provider_id)
        load = BackgroundLoad(f"{self.provider_id}:{model.model_id}", partial(self._load, entry))
        load.add_done_callback(partial(self._report_load, entry))
        worker = ModelWorker(
            model.model_id,
            self.provider_id,
            "reward-model",
            self.config.max_queue,
            guarded(model.model_id, self.provider_id, "the reward model"),
        )
        model = model.model_copy(update={"context_length": entry.max_length})
        self._slots[model.model_id] = _Slot(model, reference, entry, load, worker)
        if not self.config.load_in_background:
            await self.loaded(model.model_id)  # a model that cannot load fails the start, naming why
        return model

    def model_status(self, model_id: str) -> LoadStatus:
        """Whether ``model_id`` scores yet: ``loading``, ``ready`` or ``failed``."""
        return self._slot(model_id).load.status

    async def loaded(self, model_id: str) -> None:
        """Wait until ``model_id`` is loaded; raises the 502 its requests answer when it could not be."""
        slot = self._slot(model_id)
        try:
            await slot.load.wait()
        except Exception as exc:
            raise self._load_failure(slot.entry, exc) from exc

    def _load(self, entry: RewardModelEntry) -> RewardEngine:
        """On the loading thread: torch and transformers imported, the model read onto its device."""
        from .engine import load_engine

        return load_engine(entry, self.config.device, self.config.dtype)

    def _report_load(self, entry: RewardModelEntry, load: BackgroundLoad[RewardEngine]) -> None:
        if load.error is not None:
            log.error("%s (after %.1f s)", self._load_failure(entry, load.error).message, load.seconds())
            return
        log.info(
            "%s: reward model %s loaded from %s in %.1f s: %s",
            self.provider_id, entry.model_id, entry.folder, load.seconds(), load.result().describe(),
        )  # fmt: skip

    async def shutdown(self) -> None:
        """Stop the running scoring at its next batch (its request answers 503), drop the waiting ones, free the
        models (and those still loading, once they arrive). Called by the runtime at exit."""
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.worker.cancel_all()
        for slot in slots:
            await asyncio.to_thread(slot.worker.close)
            if slot.load.status == "loading":
                slot.load.abandon(_release)
            elif slot.load.status == "ready":
                await asyncio.to_thread(_release, slot.load.result())

    # -- the RewardScoring API ----------------------------------------------------------------------

    async def reward_score(self, request: RewardScoringRequest) -> RewardScoringResponse:
        slot = self._slot(request.model)
        pairs_count = count_pairs(request)
        if pairs_count > self.config.max_pairs:
            raise BadRequestError(
                f"prompt_generations: {pairs_count} generations in one request; {self.provider_id} scores at most "
                f"{self.config.max_pairs} per request (max_pairs): split the request",
                provider=self.provider_id,
                param="prompt_generations",
            )
        engine = self._engine(request.model, slot)
        try:
            texts = await self._inliner.fetch(_contents(request), model=request.model)
            check_chars(request, texts, self.config.max_request_chars)
            fmt = tool_format_for(slot.reference, engine.chat_template)
            pairs = request_pairs(request, texts, fmt)
            scores = await slot.worker.run(engine.score, pairs, self.config.batch_size) if pairs else []
        except LlamaStackError as exc:
            if exc.provider is None:
                exc.provider = self.provider_id
            raise
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:
            raise ProviderError(
                f"model {request.model!r} gave a score of {bad} ({slot.entry.describe_score()}); its weights or "
                f"dtype {self.config.dtype!r} overflow: try dtype float32",
                provider=self.provider_id,
            )
        numbered = iter(scores)
        return RewardScoringResponse(
            scored_generations=[
                KScoredPromptGenerations(
                    prompt=item.dialog.message,
                    k_scored_generations=[ScoredMessage(message=g, score=next(numbered)) for g in item.k_generations],
                )
                for item in request.prompt_generations
            ]
        )

    def _engine(self, model_id: str, slot: _Slot) -> RewardEngine:
        """The slot's model once loaded; a 503 with Retry-After while it loads, a 502 naming why it failed."""
        return slot.load.loaded(model_id, self.provider_id, partial(self._load_failure, slot.entry))

    def _load_failure(self, entry: RewardModelEntry, error: BaseException) -> ProviderError:
        """What a model that could not load answers (502: retrying will not help; the server needs fixing)."""
        reason = error.message if isinstance(error, LlamaStackError) else f"{type(error).__name__}: {error}"
        return ProviderError(
            f"model {entry.model_id!r}: {self.provider_id} could not load {str(entry.folder)!r}: {reason}",
            provider=self.provider_id,
            code="model_load_failed",
        )

    def _slot(self, model_id: str) -> _Slot:
        return served_slot(self._slots, model_id, self.provider_id, PROVIDER_TYPE)


def _contents(request: RewardScoringRequest) -> list[tuple[Content, str]]:
    """Every content of the request (dialogs and generations, tool responses included) with its field path."""
    contents: list[tuple[Content, str]] = []
    for i, item in enumerate(request.prompt_generations):
        at = f"prompt_generations[{i}]"
        contents += message_contents(iter_messages(item.dialog, f"{at}.dialog"))
        contents += message_contents(located(item.k_generations, f"{at}.k_generations"))
    return contents


def _release(engine: RewardEngine) -> None:
    engine.close()
