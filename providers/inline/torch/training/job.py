"""One process of a training job, from its folder to its last status.

The main process (rank 0) says how the job goes (:mod:`.progress`); a failure anywhere ends with status
``failed`` and the error's text, SIGTERM with ``cancelled``. When another process of a torchrun job fails, it
leaves its error in a hidden file of the job folder before it exits; torchrun then stops the others with
SIGTERM, and the main process reports that error rather than a cancellation.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from .progress import Progress
from .spec import SPEC_FILE, JobSpec, hold_job_lock

log = logging.getLogger("llama_stack.training")

CANCELLED_EXIT = 128 + signal.SIGTERM
_PEER_ERROR = ".rank-{rank}.error"
_ERROR_LIMIT = 4000  # characters of an error kept in status.json


class Cancelled(Exception):
    """SIGTERM: the job stops."""


class Cancellation:
    """SIGTERM's handler: the final status is written at once (torchrun may kill this process soon after);
    the work stops where :meth:`check` is called, or at once while :attr:`interruptible`."""

    def __init__(self, progress: Progress, job_dir: Path):
        self.progress = progress
        self.job_dir = job_dir
        self.requested = False
        self.interruptible = True

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        error = peer_error(self.job_dir)
        if error is not None:
            self.progress.finish("failed", error)
        else:
            self.progress.finish("cancelled")
            log.info("SIGTERM: the job stops")
        if self.interruptible:
            raise Cancelled()

    def check(self) -> None:
        if self.requested:
            raise Cancelled()


def peer_error(job_dir: Path) -> str | None:
    """The error another process of the job left, if one did."""
    for path in sorted(job_dir.glob(_PEER_ERROR.format(rank="*"))):
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            continue
    return None


def describe(exc: BaseException) -> str:
    """The error as the job's status says it: what went wrong, without a stack trace."""
    import torch

    from .data import DataError
    from .model import ModelError

    if isinstance(exc, torch.OutOfMemoryError):
        text = f"out of GPU memory: {exc}"
    elif isinstance(exc, (DataError, ModelError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:_ERROR_LIMIT]


def _expected(exc: BaseException) -> bool:
    """Errors that say all there is to say (bad data, what the model lacks); others get a traceback in the log."""
    from llama_stack.apis.errors import BadRequestError, NotFoundError

    from .data import DataError
    from .model import ModelError

    return isinstance(exc, (DataError, ModelError, BadRequestError, NotFoundError))


def configure_logging(rank: int) -> None:
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    warnings.filterwarnings("ignore", category=FutureWarning)
    # peft looks for the base's config.json beside a GGUF file, finds none, and says so at every checkpoint.
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_warning()
    transformers_logging.disable_progress_bar()


def main(job_dir: Path) -> int:
    from .distributed import launched

    rank = launched()[0]
    configure_logging(rank)
    lock = hold_job_lock(job_dir)  # noqa: F841 (held until the process exits)
    progress = Progress(job_dir, main=rank == 0)
    cancellation = Cancellation(progress, job_dir)
    cancellation.install()
    progress.update()  # running
    try:
        spec = JobSpec.model_validate_json((job_dir / SPEC_FILE).read_text(encoding="utf-8"))
        Job(spec, job_dir, progress, cancellation).run()
    except Cancelled:
        progress.finish("cancelled")
        return CANCELLED_EXIT
    except BaseException as exc:
        if cancellation.requested:  # a collective broke because the other processes stopped on SIGTERM
            progress.finish("cancelled")  # (unless the handler said failed, for a peer's error)
            return 1 if progress.status.state == "failed" else CANCELLED_EXIT
        error = peer_error(job_dir) if rank == 0 else None
        text = error or describe(exc)
        if _expected(exc):
            log.error("failed: %s", text)
        else:
            log.error("failed: %s\n%s", text, "".join(traceback.format_exception(exc)).rstrip())
        if rank != 0:
            (job_dir / _PEER_ERROR.format(rank=rank)).write_text(f"process {rank}: {text}", encoding="utf-8")
        progress.finish("failed", text)
        return 1
    finally:
        progress.draw()
        progress.close()
    progress.finish("completed")
    log.info("completed")
    return 0


class Job:
    def __init__(self, spec: JobSpec, job_dir: Path, progress: Progress, cancellation: Cancellation):
        self.spec = spec
        self.job_dir = job_dir
        self.progress = progress
        self.cancellation = cancellation

    def run(self) -> None:
        import torch

        from ..engine import resolve_device, resolve_dtype
        from . import checkpoints, distributed, model
        from .data import Encoder, Rows
        from .loop import Context, Trainer

        spec = self.spec
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        _, local_rank, size = distributed.launched()
        device = distributed.device_for(resolve_device(spec.device), local_rank, size)
        world = distributed.start(spec.distributed, device)
        try:
            dtype = resolve_dtype(spec.dtype, device)
            _check_job(spec, device)
            started = time.monotonic()
            tokenizer = model.load_tokenizer(spec)
            encoder = Encoder(tokenizer, spec.data, spec.loop.max_seq_len)
            train = encoder.encode_file(self.job_dir / spec.data.train)
            validation: Rows | None = None
            if spec.data.validation is not None:
                validation = encoder.encode_file(self.job_dir / spec.data.validation)
            _tell(train, "training", spec.loop.max_seq_len)
            if validation is not None:
                _tell(validation, "validation", spec.loop.max_seq_len)
            torch.manual_seed(spec.seed)  # a new adapter starts the same on every process and every run
            trainable = model.load(spec, tokenizer, device, dtype)
            log.info(
                "loaded %s in %.1f s: %s parameters, %s training (%s)",
                spec.base.reference,
                time.monotonic() - started,
                f"{trainable.parameters:,}",
                f"{trainable.trainable:,}",
                spec.algorithm,
            )
            self.cancellation.check()
            torch.manual_seed(spec.seed + world.rank)  # dropout differs between processes
            wrapped = distributed.wrap(trainable.model, world, spec.distributed, device)
            self.progress.resources(**_resources(world, device, dtype, trainable))
            if world.main:
                checkpoints.clear_partial(self.job_dir)
            context = Context(
                spec=spec,
                job_dir=self.job_dir,
                world=world,
                device=device,
                tokenizer=tokenizer,
                adapter=trainable.adapter,
                progress=self.progress,
                check_cancelled=self.cancellation.check,
            )
            objective = _objective(spec, trainable.pad_id, device, world)
            self.cancellation.interruptible = False  # from here on, the loop stops between micro-batches
            Trainer(context, wrapped, objective).run(train, validation)
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                self.progress.resources(peak_gpu_memory_gib=round(peak, 2))
        finally:
            # From here a SIGTERM only settles the status: what remains (the last status, the curve) is short.
            self.cancellation.interruptible = False
            distributed.stop(world)


def _check_job(spec: JobSpec, device: Any) -> None:
    """What can be refused before anything loads."""
    from .model import ModelError, check_device

    check_device(spec, device)
    if spec.kind == "dpo" and (spec.dpo is None or spec.data.format != "preference"):
        raise ModelError("a dpo job needs its dpo settings and preference rows (data.format 'preference')")
    if spec.kind == "sft" and spec.data.format == "preference":
        raise ModelError("preference rows train a dpo job, not an sft one")


def _objective(spec: JobSpec, pad_id: int, device: Any, world: Any) -> Any:
    from .dpo import DPO
    from .objective import SFT

    if spec.kind == "dpo":
        assert spec.dpo is not None
        return DPO(spec.dpo, pad_id, device, world)
    return SFT(pad_id, device)


def _tell(rows: Any, name: str, max_seq_len: int) -> None:
    if rows.truncated:
        log.warning("%d %s row(s) longer than max_seq_len %d lost their end", rows.truncated, name, max_seq_len)
    if rows.without_loss:
        shown = ", ".join(str(number) for number in rows.without_loss[:10])
        log.warning(
            "%d %s row(s) carry no loss (nothing to learn from once cut): %s", len(rows.without_loss), name, shown
        )


def _resources(world: Any, device: Any, dtype: Any, trainable: Any) -> dict[str, Any]:
    import torch

    values: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": world.size,
        "backend": world.backend,
        "strategy": world.strategy,
        "torch_threads": torch.get_num_threads(),
        "parameters": {"total": trainable.parameters, "trainable": trainable.trainable},
    }
    if device.type == "cuda":
        values["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    return values
