"""Where and how the arithmetic runs: the device, the precision (`--amp`) and the CPU threads.

Every command that runs a network (training, evaluation, the generators) resolves these here, so `--amp auto`
means the same thing for the classifier and the diffusion UNet. Bottom of the import graph: imports only `errors`.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import ImagefitError


def resolve_device(name: str) -> torch.device:
    """`--device`: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ImagefitError(f"--device got {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ImagefitError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ImagefitError(f"--device {name} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def set_threads(threads: int) -> None:
    """`--threads N`: torch's intra-op threads (0 leaves torch's default, one per core)."""
    if threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to `threads` inside the block and restored after it."""
    before = torch.get_num_threads()
    if threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN has bfloat16 instructions on this CPU (AVX512-BF16 or AMX). Where it has them, bf16 autocast
    trains the fast nets 1.4-1.7x faster than float32 (benchmarks/probes/step_speed.py, Zen 5); where it has not,
    oneDNN emulates bfloat16 and runs slower than float32, so `--amp auto` stays in float32 there."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a PyTorch without these probes: assume emulation
        return False


def resolve_amp(device: torch.device, amp: str) -> str:
    """What `--amp` means on `device`: `auto` is bf16 on CUDA and on CPUs with native bfloat16
    (cpu_has_native_bf16), no elsewhere; fp16 is CUDA only."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()) else "no"
    if amp == "fp16" and device.type != "cuda":
        raise ImagefitError("--amp fp16 needs a CUDA device; use --amp bf16 or --amp no on the CPU")
    return amp


def autocast_for(device: torch.device, amp: str):
    """(context factory, GradScaler or None) for `--amp` (resolve_amp); fp16 comes with a gradient scaler."""
    amp = resolve_amp(device, amp)
    if amp == "no":
        return contextlib.nullcontext, None
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler
