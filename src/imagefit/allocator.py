"""Keep freed CPU memory in the process instead of handing it back to the kernel after every step.

PyTorch has no caching allocator on the CPU: every activation comes from malloc and goes back to free. glibc
serves blocks over its mmap threshold (at most 32 MB) with a fresh mmap and returns them with munmap, so each
training step of fastnet-small at batch 500 (61 MB activations) faulted in ~100,000 new zeroed pages. Telling
glibc never to mmap and never to trim keeps those pages mapped and reused: 0 faults per step, 10-12% faster
steps at the same peak resident memory (benchmarks/RESULTS.md, "allocator"). jemalloc or tcmalloc via
LD_PRELOAD do the same, but need a re-exec and a library users may not have; mallopt is in every glibc.

Off with IMAGEFIT_MALLOC=default. Elsewhere than glibc (macOS, musl) nothing happens.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_done = False


def give_back_memory() -> None:
    """Return the free memory at the heap's top and in its holes to the kernel (glibc's malloc_trim): what a server
    does after a burst of large images, so its resident size falls back."""
    if platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory (once per process). True when it was set."""
    global _done
    if _done:
        return True
    if os.environ.get("IMAGEFIT_MALLOC", "").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # Large blocks from the heap (no mmap), the heap never trimmed, and grown 64 MB at a time.
    _done = bool(libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                 and libc.mallopt(_M_TOP_PAD, 64 << 20))
    return _done
