"""The other generative family: a class-conditional DCGAN, under the same `generate train/sample` interface as
the diffusion model so the two can be compared on the same metrics.

Generator: class embedding concatenated to the noise, a linear layer to 4×4, then transposed convolutions with
BatchNorm and ReLU to 32×32 and tanh (Radford et al.). Discriminator: strided convolutions with LeakyReLU(0.2),
BatchNorm after the first, and a projection head (Miyato & Koyama): logit = w·h + embed(y)·h on the pooled
features h, the usual way to condition a discriminator on the class. The stabilizers are the DCGAN ones: Adam
with β1 = 0.5, one-sided label smoothing (real targets 0.9, fake targets 0), N(0, 0.02) initial weights.
Like the diffusion loop, every step's batch and noise come from a generator seeded by (seed, step), so a stopped
run resumes bitwise.

A GAN can collapse: its samples of a class turn into near-copies of one image while its losses look ordinary (on
the 4,500-image CIFAR-10 subset of issue 31, `small` kept its lowest class at 0.68 of the real images' spread at
step 7,000, one class fell to
0.43 of it at 7,500, and by 20,000 the mean over classes was 0.07). So every checkpoint measures each class's spread (the
mean pixel distance between two of its samples, over the same for real images of that class), logs the lowest, and
warns, naming the last snapshot before it, once a class falls under `SPREAD_WARN`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, load_generator_checkpoint, save_checkpoint
from ..seeds import Stream, choice_generator
from ..errors import ImagefitError

CHECKPOINT = "gan.pt"
SPREAD_WARN = 0.5  # a class's samples half as varied as its real images: collapsing (issue 31's run: 0.68 -> 0.43)
SPREAD_IMAGES = 32  # per class, real and generated, for the spread (a few milliseconds per checkpoint)
PRESETS = {"tiny": 16, "small": 64, "base": 128}  # width of the generator's last block (×2, ×4 before it)


@dataclass
class GanConfig:
    preset: str = "small"
    size: int = 32
    classes: tuple = ()
    latent: int = 128
    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    real_label: float = 0.9  # one-sided label smoothing
    checkpoint_every: int = 1000
    seed: int = 0
    family: str = "gan"


def _levels(size: int) -> int:
    if size < 8 or size & (size - 1):
        raise ImagefitError(f"the GAN needs a power-of-two image size of 8 or more (got {size}); use --size 32")
    return size.bit_length() - 3  # doublings from 4×4


class Generator(nn.Module):
    def __init__(self, cfg: GanConfig):
        super().__init__()
        n, w = _levels(cfg.size), PRESETS[cfg.preset]
        widths = [w * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 256, 128, 64 for 32 px
        self.embed = nn.Embedding(len(cfg.classes), cfg.latent)
        self.project = nn.Sequential(nn.Linear(2 * cfg.latent, widths[0] * 16, bias=False),
                                     nn.Unflatten(1, (widths[0], 4, 4)), nn.BatchNorm2d(widths[0]), nn.ReLU(True))
        blocks = []
        for a, b in zip(widths, widths[1:]):
            blocks += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        blocks += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(torch.cat([z, self.embed(y)], 1)))


class Discriminator(nn.Module):
    def __init__(self, cfg: GanConfig):
        super().__init__()
        n, w = _levels(cfg.size), PRESETS[cfg.preset]
        widths = [w * 2 ** i for i in range(n)]  # e.g. 64, 128, 256 for 32 px: n halvings down to 4×4
        layers = [nn.Conv2d(3, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(widths[-1], 1)
        self.embed = nn.Embedding(len(cfg.classes), widths[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x).sum((2, 3))  # 4×4 features pooled
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_gan(cfg: GanConfig) -> tuple[Generator, Discriminator]:
    if cfg.preset not in PRESETS:
        raise ImagefitError(f"unknown preset '{cfg.preset}'; choose {', '.join(PRESETS)}")
    g, d = Generator(cfg), Discriminator(cfg)
    g.apply(_init)
    d.apply(_init)
    return g, d


def class_spread(images: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per class, the mean distance between two of its uint8 images (pixels scaled to [-1, 1]); NaN for a class
    with fewer than two."""
    x = images.float().flatten(1) / 127.5 - 1
    return torch.stack([torch.pdist(x[labels == c]).mean() if int((labels == c).sum()) > 1
                        else torch.tensor(float("nan")) for c in range(classes)])


class SpreadMonitor:
    """The collapse check: the same real images (`SPREAD_IMAGES` a class, seeded) and the same noise at every
    checkpoint, so the figures compare across steps and across a resume. Its draws come from its own seeded
    generators, and the generator is sampled in eval mode (no BatchNorm statistics move): training is untouched."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: GanConfig):
        g = choice_generator(cfg.seed, Stream.GAN_SPREAD)
        keep = torch.cat([torch.nonzero(labels == c).flatten()[
            torch.randperm(int((labels == c).sum()), generator=g)[:SPREAD_IMAGES]] for c in range(len(cfg.classes))])
        self.cfg, self.labels = cfg, labels[keep]
        self.real = class_spread(images[keep], self.labels, len(cfg.classes))

    def __call__(self, gen: "Generator") -> torch.Tensor:
        """Each class's spread over its real images' (1: as varied; near 0: every sample alike)."""
        was_training = gen.training
        gen.eval()
        fake = sample_gan(gen, self.cfg, self.labels, choice_generator(self.cfg.seed, 1, Stream.GAN_SPREAD))
        gen.train(was_training)
        return class_spread(fake, self.labels, len(self.cfg.classes)) / self.real


def train_gan(images: torch.Tensor, labels: torch.Tensor, cfg: GanConfig, out: Path, stop_after: int = 0,
              log=print, save_grid=None) -> dict:
    """Train (or resume) on uint8 N×3×H×W images; `save_grid(model, cfg, path)` draws the checkpoint grids."""
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen, disc = make_gan(cfg)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    step, history, seconds, spread = 0, [], 0.0, []
    ckpt = out / CHECKPOINT
    state = load_generator_checkpoint(ckpt, cfg.classes, cfg.size, cfg.preset)
    if state is not None:
        for module, key in ((gen, "generator"), (disc, "discriminator"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        step, history, seconds = state["step"], state["history"], state.get("seconds", 0.0)
        spread = state.get("spread", [])
        log(f"resuming at step {step}")
    monitor = SpreadMonitor(images, labels, cfg)
    gen.train()
    disc.train()
    start = time.perf_counter()
    while step < cfg.steps:
        g = choice_generator(cfg.seed, step, Stream.GAN)
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        real = images[idx].float() / 127.5 - 1
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        real = torch.where(flip[:, None, None, None], real.flip(-1), real)
        y = labels[idx]
        z = torch.randn(cfg.batch_size, cfg.latent, generator=g)
        fake = gen(z, y)
        # discriminator: real → 0.9 (one-sided smoothing), fake → 0
        d_real, d_fake = disc(real, y), disc(fake.detach(), y)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.full_like(d_real, cfg.real_label))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator: the non-saturating loss, fake → 1
        d_gen = disc(fake, y)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        step += 1
        history.append((loss_d.item(), loss_g.item()))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after:
            seconds += time.perf_counter() - start  # training time over all sessions, grids excluded
            newly_collapsed = record_spread(spread, step, monitor(gen), cfg.classes)
            save_checkpoint(ckpt, {"config": asdict(cfg), "generator": gen.state_dict(),
                                   "discriminator": disc.state_dict(), "opt_g": opt_g.state_dict(),
                                   "opt_d": opt_d.state_dict(), "step": step, "history": history,
                                   "seconds": seconds, "spread": spread})
            save_checkpoint(out / "snapshots" / f"generator-step{step:07d}.pt", gen.state_dict())
            if save_grid is not None:
                save_grid(gen, cfg, out / f"samples-step{step:07d}.png")
            recent = history[-min(len(history), cfg.checkpoint_every):]
            ld, lg = (sum(v) / len(recent) for v in zip(*recent))
            log(f"step {step}/{cfg.steps}  loss D {ld:.4f}  G {lg:.4f}  spread {spread[-1]['mean']:.2f} (lowest "
                f"{spread[-1]['lowest']:.2f}, {spread[-1]['class']})  {seconds:.0f} s")
            if newly_collapsed:
                log(f"warning: {newly_collapsed}")
            start = time.perf_counter()
        if stop_after and step >= stop_after and step < cfg.steps:
            return {"stopped": "interrupted", "step": step, "out": str(out)}
    recent = history[-100:]
    return {"stopped": "completed", "step": step, "loss_d": sum(v[0] for v in recent) / len(recent),
            "loss_g": sum(v[1] for v in recent) / len(recent), "train_seconds": round(seconds, 1), "out": str(out),
            "spread": spread[-1] if spread else None, "warning": collapse_warning(spread)}


def record_spread(spread: list[dict], step: int, ratio: torch.Tensor, classes: tuple) -> str | None:
    """Append a checkpoint's spread (`SpreadMonitor`'s ratios) to `spread`; the collapse warning when this
    checkpoint is the one that crossed under `SPREAD_WARN` (so it is said once, not at every checkpoint after)."""
    lowest = int(torch.nan_to_num(ratio, nan=float("inf")).argmin())
    was_healthy = not spread or spread[-1]["lowest"] >= SPREAD_WARN
    spread.append({"step": step, "mean": round(float(ratio.nanmean()), 4), "lowest": round(float(ratio[lowest]), 4),
                   "class": classes[lowest]})
    return collapse_warning(spread) if was_healthy else None


def collapse_warning(spread: list[dict]) -> str | None:
    """What to do when the last checkpoint's lowest class spread is under `SPREAD_WARN`, or None."""
    if not spread or not spread[-1]["lowest"] < SPREAD_WARN:
        return None
    last = spread[-1]
    healthy = [s["step"] for s in spread if s["lowest"] >= SPREAD_WARN]
    fix = (f"the last checkpoint before it is step {healthy[-1]}: sample from it with `imagefit generate sample "
           f"--snapshot {healthy[-1]}`" if healthy else "no checkpoint was above it: train with a lower --lr, or use "
           "the diffusion model (--family diffusion)")
    return (f"the GAN is collapsing: its {last['class']} samples are {last['lowest']:.2f} as varied as the real "
            f"images at step {last['step']} (under {SPREAD_WARN}: near-copies of a few images); {fix}")


def load_gan(path: Path, snapshot: Path | None = None) -> tuple[Generator, GanConfig]:
    state = load_checkpoint(path)
    cfg = GanConfig(**{**state["config"], "classes": tuple(state["config"]["classes"])})
    gen = make_gan(cfg)[0]
    gen.load_state_dict(load_checkpoint(snapshot) if snapshot else state["generator"])
    return gen.eval(), cfg


@torch.inference_mode()
def sample_gan(gen: Generator, cfg: GanConfig, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 images for `labels` (the generator in eval mode: BatchNorm uses its running statistics)."""
    x = gen(torch.randn(len(labels), cfg.latent, generator=generator), labels)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
