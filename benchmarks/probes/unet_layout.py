"""Probe: guided DDIM sampling speed of a `small` UNet, eager vs channels_last vs torch.compile, one process.

    python benchmarks/probes/unet_layout.py BATCH GEN
"""
import sys, time, torch
# run from the repository root with the package installed; GEN is a `generate train` folder
from imagefit.allocator import keep_freed_memory
from imagefit.generative.generate import load_generator
keep_freed_memory()
unet, cfg = load_generator(sys.argv[2] if len(sys.argv) > 2 else "runs/gen/small")
unet.eval()
B = int(sys.argv[1]) if len(sys.argv) > 1 else 100
x = torch.randn(2 * B, 3, 32, 32)
labels = torch.randint(0, 10, (2 * B,))
t = torch.tensor(500)

def bench(fn, x, n=6):
    with torch.inference_mode():
        for _ in range(2):
            fn(x)
        ts = []
        for _ in range(n):
            s = time.perf_counter(); fn(x); ts.append(time.perf_counter() - s)
    ts.sort()
    return ts[len(ts) // 2]

eager = lambda x: unet(x, t, class_labels=labels).sample
base = bench(eager, x)
print(f"eager contiguous: {base*1000:.0f} ms per {2*B} evals -> {B/(base*50):.2f} img/s (50 guided steps)", flush=True)
unet_cl = unet.to(memory_format=torch.channels_last)
xc = x.contiguous(memory_format=torch.channels_last)
cl = bench(eager, xc)
print(f"channels_last: {cl*1000:.0f} ms -> {B/(cl*50):.2f} img/s ({base/cl:.2f}x)", flush=True)
unet.to(memory_format=torch.contiguous_format)
s = time.perf_counter()
comp = torch.compile(unet)
fn = lambda x: comp(x, t, class_labels=labels).sample
with torch.inference_mode():
    fn(x)
print(f"compile: {time.perf_counter()-s:.1f} s first call", flush=True)
c = bench(fn, x)
print(f"compiled: {c*1000:.0f} ms -> {B/(c*50):.2f} img/s ({base/c:.2f}x)", flush=True)
