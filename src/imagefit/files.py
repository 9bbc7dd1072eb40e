"""Atomic writes: a run killed mid-save leaves the previous file intact.

Every file imagefit writes that a later step reads (checkpoints, bundles, caches, metrics) goes to a temporary
file in the same folder, is flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def atomic_path(target: str | Path):
    """Yields a temporary path beside `target`; renames it over `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
