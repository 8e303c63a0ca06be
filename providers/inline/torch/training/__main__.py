"""``python -m llama_stack.providers.inline.torch.training <job folder>`` (alone, or each process of torchrun)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m llama_stack.providers.inline.torch.training <job folder>", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    if not job_dir.is_dir():
        print(f"no job folder at {job_dir}", file=sys.stderr)
        return 2
    # Before anything imports tqdm, which reads it once: transformers' progress bars (dequantizing a GGUF
    # file) are not log lines.
    os.environ.setdefault("TQDM_DISABLE", "1")
    from .job import main

    return main(job_dir)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
