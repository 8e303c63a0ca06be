"""loss.png: the job's training loss by step, and its validation loss (one point per epoch) on the same axes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def draw(path: Path, training: list[tuple[int, float]], validation: list[tuple[int, float]]) -> None:
    """Replace ``path`` with the curve (atomically: a reader never sees half a PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into memory
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    steps, losses = zip(*training, strict=True)
    axes.plot(steps, losses, label="training", color="tab:blue", linewidth=1.2, marker="." if len(steps) < 40 else None)
    if validation:
        v_steps, v_losses = zip(*validation, strict=True)
        axes.plot(v_steps, v_losses, label="validation", color="tab:orange", marker="o", linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
