"""The progress bar of long training loops (a LoRA round, a student's distillation): shared, so the
train and compress stages, which may not import each other, show the same bar."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool) -> Any:
    """A transient rich bar: description, bar, steps done of all, running loss, time elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )
