"""Writing files without losing any: atomic writes, and one process at a time in a run folder.

Every file imagefit writes that a later step reads (checkpoints, bundles, caches, metrics, plots) goes to a
temporary file in the same folder, is flushed to disk, then renamed over the target in one step, and the folder is
flushed after the rename: a run killed mid-save (or a power loss) leaves the previous file intact. The file gets the
mode the user's umask gives a new file (mkstemp's 0600 would hide reports from everyone else). A full disk is one
line naming the file. A temporary file left by a process killed mid-write is removed by the next run that holds the
folder (`remove_stale_temporaries`); `RunLock` makes that next run the only one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ImagefitError

TEMPORARY = ".{name}.*.tmp"  # what atomic_path leaves behind when killed mid-write


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(e: BaseException) -> bool:
    text = str(e)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left" in text or "unexpected pos" in text  # torch.save's zip writer on a full disk


@contextmanager
def atomic_path(target: str | Path):
    """Yields a temporary path beside `target`; renames it over `target` only if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise ImagefitError(f"cannot write {target} ({e.strerror or type(e).__name__}); choose a writable "
                            f"--out") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # after the writer: some (safetensors) make the file anew, 0600
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except (OSError, RuntimeError) as e:
            if not _disk_full(e):
                raise
            written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            raise ImagefitError(f"no space left on the device to write {target} (it ran out {written / 1e6:.1f} MB "
                                f"into the file; the previous {target.name}, if any, is intact); free more space than "
                                f"that and run the command again") from None
        _fsync_folder(target.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a power loss after it cannot bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a folder; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def check_writable(folder: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written: an existing file, a path through a
    file, a read-only place."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImagefitError(f"cannot write in {folder}: it is a file; choose a new folder for {flag}")
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ImagefitError(f"cannot write in {folder}: {parent} is a file; choose another {flag}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ImagefitError(f"cannot write in {folder}: {parent} is read-only; choose another {flag}")
            break
    return folder


def remove_stale_temporaries(*folders: Path) -> list[Path]:
    """Delete the temporary files an earlier process left when it was killed mid-write (only call this while
    holding the folder's RunLock: nobody else is writing there then). Returns what was removed."""
    removed = []
    for folder in folders:
        for p in Path(folder).glob(TEMPORARY.format(name="*")):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


class RunLock:
    """An exclusive lock on a run folder (`flock` on FOLDER/.imagefit.lock), held while a process writes there.
    The operating system releases it when the process ends, however it ends: a dead process leaves no stale lock."""

    NAME = ".imagefit.lock"

    def __init__(self, folder: Path):
        self.folder, self.fd = Path(folder), None
        self.made: list[Path] = []  # what acquire created: removed again by release(undo=True)

    def acquire(self) -> RunLock:
        path = self.folder / self.NAME
        try:
            missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
            self.folder.mkdir(parents=True, exist_ok=True)
            made_file = not path.exists()
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            self.made = ([path] if made_file else []) + missing
        except OSError as e:
            raise ImagefitError(f"cannot write in {self.folder} ({e.strerror or type(e).__name__}); choose a "
                                f"writable --out") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            self.fd = None
            raise ImagefitError(f"{self.folder} is in use by another imagefit process (pid {holder}); wait for it to "
                                f"finish, or choose another --out") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def release(self, undo: bool = False) -> None:
        """Unlock; with `undo`, also remove the lock file and the folders acquire created (a command that failed
        before writing anything leaves no trace)."""
        if self.fd is not None:
            if undo:
                for p in self.made:
                    try:
                        p.unlink() if p.name == self.NAME else p.rmdir()
                    except OSError:
                        break  # a folder something else has written into meanwhile stays
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
