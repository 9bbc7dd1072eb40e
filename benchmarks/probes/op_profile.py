"""Probe: where a recipe's 32-px training step spends its time, per op, against the machine's convolution ceiling.

    python benchmarks/probes/op_profile.py --data DIR [--recipe fast] [--warmup 3] [--steps 6]

The real Trainer (the recipe as shipped, but every epoch at its full size, so the steps profiled are the 32-px ones)
runs warm-up + profiled steps; torch.profiler records only the profiled ones (a global optimizer-step hook advances
its schedule, so nothing of the Trainer is copied here). Prints, per step: self CPU time by op family
(convolution forward, convolution backward, BatchNorm, activations, pooling, optimizer, copies and layout, ...),
each family's share of the step; the convolutions' achieved GFLOP/s (forward FLOPs from the profiler, backward
counted as twice forward: input and weight gradients, which overstates it by the frozen first layer's share) against the 3x3-convolution ceiling in the step's precision
(probes/peak.py); and the ten costliest ops. A JSON line last.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).parent))
from peak import ceilings, cpu_name  # noqa: E402

from imagefit.api import make_config  # noqa: E402
from imagefit.runtime import resolve_amp  # noqa: E402
from imagefit.training.train import RunOptions, Trainer  # noqa: E402

# op-name fragments -> family, first match wins (aten names as torch 2.x's CPU profiler reports them)
FAMILIES = [
    ("convolution backward", ("convolution_backward", "convolutionbackward")),
    ("convolution forward", ("mkldnn_convolution", "_convolution", "conv2d", "convolution")),
    ("batchnorm", ("batch_norm", "batchnorm")),
    ("activation", ("gelu", "relu", "silu")),
    ("pooling", ("pool",)),
    ("matmul (head, optimizer)", ("mm", "matmul", "linear", "addmm")),
    ("copies and layout", ("copy_", "to_copy", "contiguous", "clone", "empty", "permute", "view", "reshape",
                           "as_strided", "transpose", "expand", "cat")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
    ("elementwise (optimizer, lookahead, others)", ("add", "mul", "lerp", "div", "sub", "norm", "sum", "mean",
                                                     "foreach", "sqrt", "zero", "fill", "where", "isfinite")),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def train_flops(model: torch.nn.Module, batch: int, size: int) -> tuple[int, int]:
    """(convolution FLOPs, all FLOPs) of one training step of a copy of `model` on a random batch."""
    from torch.utils.flop_counter import FlopCounterMode
    model = copy.deepcopy(model).train()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (batch,))).backward()
    ops = counter.get_flop_counts()["Global"]
    conv = sum(v for k, v in ops.items() if "convolution" in str(k))
    return conv, counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", default="fast")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    cfg = make_config(args.recipe, data=args.data, progressive_sizes=[], epochs=1)
    amp = resolve_amp(torch.device("cpu"), cfg.train.amp)
    peak = ceilings(2.0)
    ceiling = peak["conv3x3_bf16_gflops" if amp == "bf16" else "conv3x3_fp32_gflops"]

    sched = schedule(wait=0, warmup=args.warmup, active=args.steps, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=sched, with_flops=True, record_shapes=True) as prof:
        hook = register_optimizer_step_post_hook(lambda *a: prof.step())
        try:
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(cfg, RunOptions(out=Path(tmp) / "r", tracking_uri="none", progress="lines",
                                                  stop_after_steps=args.warmup + args.steps, log=lambda m: None))
                trainer.fit()
        finally:
            hook.remove()
    conv_flops, step_flops = train_flops(trainer.model, cfg.train.batch_size, cfg.data.size)
    events = prof.key_averages()
    # self times sum to the step without double counting; the profiler's FLOPs sit on the conv ops' own events
    by_family, total_us = defaultdict(float), 0.0
    for e in events:
        total_us += e.self_cpu_time_total
        by_family[family(e.key)] += e.self_cpu_time_total
    per_step = total_us / args.steps / 1e3
    conv_ms = (by_family["convolution forward"] + by_family["convolution backward"]) / args.steps / 1e3
    conv_gflops = conv_flops / (conv_ms / 1e3) / 1e9 if conv_ms else 0.0
    step_gflops = step_flops / (per_step / 1e3) / 1e9
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {args.recipe} at {cfg.data.size} px, batch "
          f"{cfg.train.batch_size}, {'bfloat16' if amp == 'bf16' else 'float32'}; {args.steps} steps after "
          f"{args.warmup} of warm-up")
    print(f"step: {per_step:.0f} ms inside ops (the calling thread's time in each op, its own threads included; "
          f"the batch's augmentation is part of it)")
    for fam, us in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f"  {fam:>44}: {us / args.steps / 1e3:8.1f} ms  {100 * us / total_us:5.1f}%")
    print(f"convolutions: {conv_gflops:.0f} GFLOP/s while they run ({100 * conv_gflops / ceiling:.1f}% of the "
          f"{ceiling:.0f} GFLOP/s ceiling); the whole step: {step_gflops:.0f} GFLOP/s "
          f"({100 * step_gflops / ceiling:.1f}%)")
    print(f"FLOPs per step (flop_counter): {step_flops / 1e9:.0f} G, of which convolutions {conv_flops / 1e9:.0f} G; "
          f"'ProfilerStep*' is the Python between ops (the Trainer's own code and the optimizer's loops)")
    print("costliest ops (self CPU ms per step):")
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]
    for e in top:
        print(f"  {e.key:>44}: {e.self_cpu_time_total / args.steps / 1e3:8.1f} ms  calls/step "
              f"{e.count / args.steps:5.1f}")
    print(json.dumps({"cpu": cpu_name(), "recipe": args.recipe, "amp": amp, "step_ms": round(per_step, 1),
                      "families_ms": {k: round(v / args.steps / 1e3, 1) for k, v in by_family.items()},
                      "conv_gflops": round(conv_gflops, 1), "step_gflops": round(step_gflops, 1),
                      "step_flops": step_flops, "conv_flops": conv_flops,
                      "ceiling_gflops": ceiling, "peak": peak,
                      "top": [[e.key, round(e.self_cpu_time_total / args.steps / 1e3, 1)] for e in top]}))


if __name__ == "__main__":
    main()
