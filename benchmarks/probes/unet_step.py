"""Probe: one training step (forward + backward + AdamW) of a diffusion UNet: float32, bfloat16 autocast with
PyTorch's default attention kernel (flash on the CPU), and bfloat16 with the math kernel (what `generate train`
runs), alternated in one process so a drifting machine hits all alike.

    python benchmarks/probes/unet_step.py [PRESET] [SIZE] [BATCH] [ROUNDS]
"""
import sys, time, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from imagefit.allocator import keep_freed_memory
from imagefit.generative.generate import DiffusionConfig, make_unet

keep_freed_memory()
preset, size, batch, rounds = (sys.argv[1:] + ["small", "32", "64", "5"][len(sys.argv) - 1:])[:4]
size, batch, rounds = int(size), int(batch), int(rounds)
cfg = DiffusionConfig(preset=preset, size=size, classes=tuple(str(i) for i in range(10)))
torch.manual_seed(0)
unet = make_unet(cfg)
opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
x = torch.randn(batch, 3, size, size)
t = torch.randint(1000, (batch,))
y = torch.randint(11, (batch,))


def step(kind):
    kernels = [SDPBackend.MATH] if kind == "bf16-math" else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(kernels), torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind != "fp32"):
        loss = F.mse_loss(unet(x, t, class_labels=y).sample.float(), x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


times = {"fp32": [], "bf16": [], "bf16-math": []}
for kind in times:  # warm-up
    step(kind); step(kind)
for _ in range(rounds):
    for kind in times:
        s = time.perf_counter()
        step(kind)
        times[kind].append(time.perf_counter() - s)
med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
print(f"{preset} {size}px batch {batch}, {torch.get_num_threads()} threads, median of {rounds}: "
      f"fp32 {med['fp32']:.3f} s/step, bf16 {med['bf16']:.3f} ({med['fp32'] / med['bf16']:.2f}x), "
      f"bf16 + math attention {med['bf16-math']:.3f} ({med['fp32'] / med['bf16-math']:.2f}x)")
