"""Generative augmentation: a class-conditional diffusion model (DDPM) that learns the training images, and
the sampler that turns it into an ImageFolder of synthetic ones.

The network is diffusers' `UNet2DModel` with a class embedding (one extra "no class" index for classifier-free
guidance: labels are dropped to it with probability `label_dropout` while training); the noise schedules and the
DDPM/DDIM steps are diffusers' schedulers. What is ours: the presets, the loop (seeded per step so a stopped run
resumes bitwise, like the classifier's), EMA weights, checkpoints with per-class sample grids, and a guided,
batched, resumable sampler that writes class folders, and diffuse-and-denoise variations of real images. The GAN
family (gan.py) plugs into the same train/sample/grid functions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..checkpoint import load_checkpoint, load_generator_checkpoint, save_checkpoint
from ..seeds import Stream, choice_generator
from ..training.ema import ema_decay
from ..errors import ImagefitError
from ..files import atomic_write_text

# Channels per resolution level, residual blocks per level, which levels get self-attention, GroupNorm groups.
PRESETS = {
    "tiny": dict(block_out_channels=(16, 32), layers_per_block=1, attention=(False, False), groups=8),  # tests
    # CPU-hours: 1.1M parameters, 0.50 GFLOP per evaluation (the first draft, 64/128/128 with two blocks per level,
    # was 3.0 GFLOP: 20 s per batch-64 step on one core, ~500 steps in 3 CPU-hours, and 0.1 sampled images/s).
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention=(False, False, True), groups=8),
    "base": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,  # ≈ the DDPM paper's CIFAR net
                 attention=(False, True, False, False), groups=32),
}
CHECKPOINT = "diffusion.pt"


@dataclass
class DiffusionConfig:
    preset: str = "small"
    size: int = 32
    classes: tuple = ()
    schedule: str = "cosine"  # linear (DDPM) or cosine (Nichol & Dhariwal)
    train_timesteps: int = 1000
    steps: int = 20000
    batch_size: int = 64
    lr: float = 2e-4
    ema: float = 0.999
    label_dropout: float = 0.1
    checkpoint_every: int = 1000
    seed: int = 0
    family: str = "diffusion"
    amp: str = "auto"  # bfloat16 autocast: auto (where the CPU has it natively), bf16, no


def use_bf16(amp: str) -> bool:
    """Whether a UNet runs under bfloat16 autocast: the classifier's `--amp` rule on the CPU (runtime.resolve_amp:
    `auto` only where bfloat16 is native, AVX512-BF16 or AMX; emulated bfloat16 is slower than float32)."""
    from ..runtime import resolve_amp
    if amp not in ("auto", "bf16", "no"):
        raise ImagefitError(f"--amp must be auto, bf16 or no (got {amp!r})")
    return resolve_amp(torch.device("cpu"), amp) == "bf16"


def _precision(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _training_attention(bf16: bool):
    """The attention kernel of a training step. PyTorch's CPU flash-attention backward is ~10x slower in bfloat16
    than in float32 at the `small` UNet's 8x8 attention (440 against 42 ms per 3 steps under torch.profiler, AMX
    machine), which ate the bfloat16 gain; its plain math kernel does not: a bf16 step of `small` at 32 px takes 0.33 s
    with it against 0.46 s with flash, and 0.55 s in float32 (benchmarks/probes/unet_step.py). Sampling keeps flash,
    whose forward is the faster of the two."""
    return sdpa_kernel([SDPBackend.MATH]) if bf16 else contextlib.nullcontext()


def make_unet(cfg: DiffusionConfig):
    from diffusers import UNet2DModel
    if cfg.preset not in PRESETS:
        raise ImagefitError(f"unknown preset '{cfg.preset}'; choose {', '.join(PRESETS)}")
    p = PRESETS[cfg.preset]
    levels = len(p["block_out_channels"])
    if cfg.size % 2 ** (levels - 1):
        raise ImagefitError(f"--size {cfg.size} must be a multiple of {2 ** (levels - 1)} for preset {cfg.preset}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in p["attention"])
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(p["attention"]))
    return UNet2DModel(sample_size=cfg.size, in_channels=3, out_channels=3, block_out_channels=p["block_out_channels"],
                       layers_per_block=p["layers_per_block"], down_block_types=down, up_block_types=up,
                       num_class_embeds=len(cfg.classes) + 1, add_attention=any(p["attention"]),
                       norm_num_groups=p["groups"])


def make_scheduler(cfg: DiffusionConfig, sampler: str = "ddpm"):
    from diffusers import DDIMScheduler, DDPMScheduler
    if cfg.schedule not in ("linear", "cosine"):
        raise ImagefitError(f"--schedule must be linear or cosine (got {cfg.schedule!r})")
    beta = "linear" if cfg.schedule == "linear" else "squaredcos_cap_v2"
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=cfg.train_timesteps, beta_schedule=beta, clip_sample=True)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def train_diffusion(images: torch.Tensor, labels: torch.Tensor, cfg: DiffusionConfig, out: Path,
                    stop_after: int = 0, log=print) -> dict:
    """Train (or resume, when OUT holds a checkpoint) on uint8 N×3×H×W images. Each step's batch, flips, noise and
    timesteps come from a generator seeded by (seed, step): a resumed run takes exactly the steps it would have."""
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # the initial weights; everything after is seeded per step
    unet = make_unet(cfg)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    scheduler = make_scheduler(cfg)
    step, history, seconds = 0, [], 0.0
    ckpt = out / CHECKPOINT
    state = load_generator_checkpoint(ckpt, cfg.classes, cfg.size, cfg.preset)
    if state is not None:
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, history, seconds = state["step"], state["history"], state.get("seconds", 0.0)
        log(f"resuming at step {step}")
    null = len(cfg.classes)
    bf16 = use_bf16(cfg.amp)
    unet.train()
    start = time.perf_counter()
    while step < cfg.steps:
        g = choice_generator(cfg.seed, step, Stream.DIFFUSION)
        idx = torch.randint(len(images), (cfg.batch_size,), generator=g)
        x0 = _to_unit(images[idx])
        flip = torch.rand(cfg.batch_size, generator=g) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = labels[idx].clone()
        y[torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout] = null  # classifier-free guidance
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(cfg.train_timesteps, (cfg.batch_size,), generator=g)
        with _precision(bf16), _training_attention(bf16):
            pred = unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = ema_decay(cfg.ema, step)
            for e, p in zip(ema.parameters(), unet.parameters()):
                e.lerp_(p, 1 - decay)
        step += 1
        history.append(loss.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after:
            seconds += time.perf_counter() - start  # training time over all sessions, grids excluded
            save_checkpoint(ckpt, {"config": asdict(cfg), "unet": unet.state_dict(), "ema": ema.state_dict(),
                                   "optimizer": opt.state_dict(), "step": step, "history": history,
                                   "seconds": seconds})
            save_checkpoint(out / "snapshots" / f"ema-step{step:07d}.pt", ema.state_dict())  # for FID per step
            save_grid(ema, cfg, out / f"samples-step{step:07d}.png")
            recent = history[-min(len(history), cfg.checkpoint_every):]
            log(f"step {step}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}  {seconds:.0f} s")
            start = time.perf_counter()
        if stop_after and step >= stop_after and step < cfg.steps:
            return {"stopped": "interrupted", "step": step, "out": str(out)}
    return {"stopped": "completed", "step": step, "loss": sum(history[-100:]) / len(history[-100:]),
            "train_seconds": round(seconds, 1), "out": str(out)}


def save_grid(model, cfg, path: Path, per_class: int = 4, steps: int = 25) -> Path:
    """A PNG grid, one row per class, of `per_class` samples (guided DDIM for diffusion; fixed seed: rows compare
    across checkpoints)."""
    from PIL import Image
    from torchvision.utils import make_grid
    was_training = model.training
    model.eval()
    labels = torch.arange(len(cfg.classes)).repeat_interleave(per_class)
    images = draw(model, cfg, labels, steps=min(steps, getattr(cfg, "train_timesteps", steps)), guidance=2.0,
                  amp=getattr(cfg, "amp", "no"))
    model.train(was_training)
    grid = make_grid(images, nrow=per_class, padding=1)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def load_generator(folder: str | Path, snapshot: str | Path | None = None):
    """(model, config) from a `generate train` folder: the EMA UNet of a diffusion run or a GAN's generator; with
    `snapshot`, the weights of that checkpoint (folder/snapshots/*.pt) instead of the last ones."""
    from . import gan
    folder = Path(folder)
    if (folder / gan.CHECKPOINT).is_file():
        return gan.load_gan(folder / gan.CHECKPOINT, Path(snapshot) if snapshot else None)
    path = folder / CHECKPOINT
    if not path.is_file():
        raise ImagefitError(f"no diffusion or GAN checkpoint in {folder}; pass the folder 'imagefit generate train' "
                            f"wrote")
    state = load_checkpoint(path)
    cfg = DiffusionConfig(**{**state["config"], "classes": tuple(state["config"]["classes"])})
    unet = make_unet(cfg)
    unet.load_state_dict(load_checkpoint(Path(snapshot)) if snapshot else state["ema"])
    return unet.eval(), cfg


def snapshots(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint's weights a training run kept, in step order."""
    found = sorted(Path(folder, "snapshots").glob("*-step*.pt"))
    return [(int(p.stem.rsplit("step", 1)[1]), p) for p in found]


def snapshot_path(folder: str | Path, step: int) -> Path:
    """The kept weights of training step `step`, or a one-line error naming the steps that were kept."""
    kept = dict(snapshots(folder))
    if step not in kept:
        steps = list(kept)  # in step order
        have = ("it kept none" if not steps else f"kept: {steps[0]}" if len(steps) == 1 else
                f"kept: {steps[0]} to {steps[-1]}, every {steps[1] - steps[0]}")
        raise ImagefitError(f"--snapshot {step}: {folder} has no weights of step {step} ({have}); pick a kept step")
    return kept[step]


def check_options(cfg, steps: int, guidance: float) -> None:
    if not hasattr(cfg, "train_timesteps"):
        return  # a GAN: one forward per image, no steps or guidance
    if not 1 <= steps <= cfg.train_timesteps:
        raise ImagefitError(f"--steps must be between 1 and {cfg.train_timesteps} (got {steps})")
    if not 0 <= guidance <= 20:
        raise ImagefitError(f"--guidance must be between 0 and 20 (got {guidance:g}); 1 is plain conditioning")


def draw(model, cfg, labels: torch.Tensor, *, steps: int = 50, guidance: float = 2.0, sampler: str = "ddim",
         generator: torch.Generator | None = None, amp: str = "auto") -> torch.Tensor:
    """uint8 images of `labels` from either family (`amp`: the diffusion UNet's precision; a GAN runs in float32)."""
    from .gan import GanConfig, sample_gan
    g = generator or torch.Generator().manual_seed(0)
    if isinstance(cfg, GanConfig):
        return sample_gan(model, cfg, labels, g)
    return sample(model, cfg, labels, steps=steps, guidance=guidance, sampler=sampler, generator=g, amp=amp)


@torch.inference_mode()
def sample(unet, cfg: DiffusionConfig, labels: torch.Tensor, *, steps: int = 50, guidance: float = 2.0,
           sampler: str = "ddim", generator: torch.Generator | None = None, amp: str = "auto") -> torch.Tensor:
    """uint8 images for `labels`, denoised in `steps` steps; with guidance w the noise estimate is
    uncond + w·(cond − uncond), both halves in one forward pass. `generator` draws the noise (default: seed 0);
    `amp` the UNet's precision (use_bf16); the sampler's own arithmetic stays float32."""
    check_options(cfg, steps, guidance)
    scheduler = make_scheduler(cfg, sampler)
    scheduler.set_timesteps(steps)
    g = generator or torch.Generator().manual_seed(0)
    x = torch.randn((len(labels), 3, cfg.size, cfg.size), generator=g)
    return _to_uint8(_denoise(unet, cfg, scheduler, x, labels, scheduler.timesteps, guidance, g, use_bf16(amp)))


def _denoise(unet, cfg, scheduler, x, labels, timesteps, guidance, g, bf16: bool):
    null = torch.full_like(labels, len(cfg.classes))
    both = torch.cat([labels, null])
    for t in timesteps:
        with _precision(bf16):
            eps = unet(torch.cat([x, x]), t, class_labels=both).sample
        eps_cond, eps_uncond = eps.float().chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        x = scheduler.step(eps, t, x, generator=g).prev_sample
    return x


@torch.inference_mode()
def vary(unet, cfg: DiffusionConfig, images: torch.Tensor, labels: torch.Tensor, strength: float, *,
         steps: int = 50, guidance: float = 2.0, generator: torch.Generator | None = None,
         amp: str = "auto") -> torch.Tensor:
    """Diffuse-and-denoise (SDEdit, Meng et al. 2022): noise real uint8 images with the forward process to
    t ≈ strength·T, q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I), then run the last strength·steps DDIM steps back.
    Strength 0 returns the images; 1 forgets them (a plain sample of their class)."""
    if not 0 < strength <= 1:
        raise ImagefitError(f"--strength must be in (0, 1] (got {strength:g}); 0.3 keeps the layout, 1 is a new sample")
    check_options(cfg, steps, guidance)
    scheduler = make_scheduler(cfg, "ddim")
    scheduler.set_timesteps(steps)
    g = generator or torch.Generator().manual_seed(0)
    timesteps = scheduler.timesteps[steps - max(1, round(strength * steps)):]
    x0 = _to_unit(images)
    noise = torch.randn(x0.shape, generator=g)
    x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(x0)))
    return _to_uint8(_denoise(unet, cfg, scheduler, x, labels, timesteps, guidance, g, use_bf16(amp)))


def sample_folder(folder: str | Path, out: str | Path, per_class: int, *, steps: int = 50, guidance: float = 2.0,
                  sampler: str = "ddim", batch: int = 100, seed: int = 0, amp: str = "auto", snapshot: int | None = None,
                  log=print) -> dict:
    """Write per_class images of every class as OUT/train/<class>/<i>.png (an ImageFolder tree). Batches are
    seeded by (seed, class, first index), so a stopped run resumes where it stopped without duplicating images.
    `snapshot`: the training step whose kept weights to sample (default: the last)."""
    unet, cfg = load_generator(folder, snapshot_path(folder, snapshot) if snapshot is not None else None)
    out = Path(out)
    if per_class < 1:
        raise ImagefitError(f"--per-class must be 1 or more (got {per_class})")
    check_options(cfg, steps, guidance)
    precision = "bfloat16" if hasattr(cfg, "train_timesteps") and use_bf16(amp) else "float32"  # a GAN: float32
    written, start = 0, time.perf_counter()
    for c, name in enumerate(cfg.classes):
        d = out / "train" / name
        d.mkdir(parents=True, exist_ok=True)
        for first in range(0, per_class, batch):
            n = min(batch, per_class - first)
            if all((d / f"{i}.png").exists() for i in range(first, first + n)):
                continue  # done in an earlier run
            images = draw(unet, cfg, torch.full((n,), c), steps=steps, guidance=guidance, sampler=sampler,
                          generator=choice_generator(seed, c * 1_000_000 + first, Stream.DIFFUSION), amp=amp)
            _write_pngs(images, d, first)
            written += n
            rate = written / (time.perf_counter() - start)
            log(f"{name}: {first + n}/{per_class}  ({rate:.2f} images/s)")
    meta = {"generator": str(folder), "family": getattr(cfg, "family", "diffusion"), "per_class": per_class,
            "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed, "classes": list(cfg.classes),
            "precision": precision, **({"snapshot": snapshot} if snapshot is not None else {})}
    seconds = time.perf_counter() - start
    meta["gflop_per_image"] = round(flops_per_image(unet, cfg, steps) / 1e9, 2)
    if written:  # this run's sampling speed (a resumed run that had nothing to do keeps the earlier figure)
        meta.update(images_per_s=round(written / seconds, 3), threads=torch.get_num_threads())
    elif (out / "synthetic.json").exists():
        meta.update({k: v for k, v in json.loads((out / "synthetic.json").read_text()).items()
                     if k in ("images_per_s", "threads")})
    atomic_write_text(out / "synthetic.json", json.dumps(meta, indent=1))
    return {"images_per_s": math.nan, **meta, "written": written, "seconds": round(seconds, 1), "out": str(out)}


def flops_per_image(model, cfg, steps: int) -> float:
    """Floating-point operations to draw one image: a GAN's one forward, or a guided sampler's 2 × steps UNet
    evaluations (counted by torch's FlopCounterMode on one evaluation)."""
    from torch.utils.flop_counter import FlopCounterMode
    label = torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        if hasattr(cfg, "train_timesteps"):
            model(torch.zeros(1, 3, cfg.size, cfg.size), torch.tensor([10]), class_labels=label)
        else:
            model(torch.zeros(1, cfg.latent), label)
    per_eval = counter.get_total_flops()
    return per_eval * 2 * steps if hasattr(cfg, "train_timesteps") else per_eval


def _write_pngs(images: torch.Tensor, folder: Path, first: int) -> None:
    from PIL import Image
    for i, img in enumerate(images):
        tmp = folder / f".{first + i}.png.tmp"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        tmp.replace(folder / f"{first + i}.png")


def vary_folder(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str], out: str | Path,
                strength: float, *, steps: int = 50, guidance: float = 2.0, batch: int = 100, seed: int = 0,
                amp: str = "auto", log=print) -> dict:
    """Diffuse-and-denoise variations of real images as OUT/train/<class>/<index>.png, the index being the real
    image's position in its split: resumable like `sample_folder`. Mixed in with `train --synthetic OUT
    --synthetic-ratio p`, this is the augmentation 'replace an image by a variation with probability p'
    (precomputed: denoising on the fly would cost ~30 network evaluations per image on a CPU)."""
    unet, cfg = load_generator(folder)
    if not hasattr(cfg, "train_timesteps"):
        raise ImagefitError(f"{folder} holds a GAN; diffuse-and-denoise variations need a diffusion model")
    missing = [c for c in classes if c not in cfg.classes]
    if missing:
        raise ImagefitError(f"{folder} was trained on classes {', '.join(cfg.classes)}; it cannot vary images of "
                            f"{', '.join(missing)} (pass --classes to choose among its classes)")
    if images.shape[-1] != cfg.size:
        raise ImagefitError(f"{folder} makes {cfg.size} px images; these are {images.shape[-1]} px "
                            f"(resize them to {cfg.size} px)")
    remap = torch.tensor([cfg.classes.index(c) for c in classes])
    out = Path(out)
    for name in classes:
        (out / "train" / name).mkdir(parents=True, exist_ok=True)
    written, start = 0, time.perf_counter()
    for first in range(0, len(images), batch):
        idx = torch.arange(first, min(first + batch, len(images)))
        paths = [out / "train" / classes[labels[i]] / f"{i}.png" for i in idx.tolist()]
        if all(p.exists() for p in paths):
            continue
        y = remap[labels[idx]]
        varied = vary(unet, cfg, images[idx], y, strength, steps=steps, guidance=guidance,
                      generator=choice_generator(seed, first, Stream.VARIATIONS), amp=amp)
        for i, img, path in zip(idx.tolist(), varied, paths):
            _write_pngs(img[None], path.parent, i)
        written += len(idx)
        log(f"{first + len(idx)}/{len(images)}  ({written / (time.perf_counter() - start):.2f} images/s)")
    meta = {"generator": str(folder), "family": "diffusion", "variations": True, "strength": strength,
            "steps": steps, "guidance": guidance, "seed": seed, "classes": list(classes)}
    atomic_write_text(out / "synthetic.json", json.dumps(meta, indent=1))
    seconds = time.perf_counter() - start
    return {**meta, "written": written, "seconds": round(seconds, 1), "out": str(out)}


# ---------------------------------------------------------------------------------------------- from a data folder

def _training_images(data: str | None, classes, size: int, seed: int, command: str):
    """The training split of `data` in memory at `size` px, in the order of `classes` (all when empty)."""
    from ..config import Config, DataConfig
    from ..data.sources import ImageSet, load_splits
    data_cfg = DataConfig(data=data, val_fraction=0.0, classes=list(classes), size=size)
    Config(data=data_cfg).validate()  # --size: the data path's own range
    splits = load_splits(data_cfg, seed)
    if not isinstance(splits.train, ImageSet):
        raise ImagefitError(f"{splits.source} is streamed from disk; 'generate {command}' needs it in memory")
    return splits.train


def train_generator(data: str | None, out: str | Path, *, family: str = "diffusion", preset: str = "small",
                    classes=(), size: int = 32, steps: int = 20000, batch_size: int = 64, lr: float = 2e-4,
                    schedule: str = "cosine", checkpoint_every: int = 1000, seed: int = 0, stop_after_steps: int = 0,
                    amp: str = "auto", log=print) -> dict:
    """`imagefit generate train`: a class-conditional diffusion model (or DCGAN, `family="gan"`) of the training
    images of `data`, resized to `size`; resumes when `out` holds a checkpoint of the same family."""
    from . import gan
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--checkpoint-every", checkpoint_every)):
        if value < 1:
            raise ImagefitError(f"{name} must be 1 or more (got {value})")
    if family not in ("diffusion", "gan"):
        raise ImagefitError(f"--family must be diffusion or gan (got {family!r})")
    train = _training_images(data, classes, size, seed, "train")
    common = dict(preset=preset, size=train.images.shape[-1], classes=tuple(train.classes), steps=steps,
                  batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every, seed=seed)
    other = Path(out) / (CHECKPOINT if family == "gan" else gan.CHECKPOINT)
    if other.exists():
        raise ImagefitError(f"{out} holds a {'diffusion' if family == 'gan' else 'GAN'} run ({other.name}); pass "
                            f"its --family to resume it, or a new --out")
    if family == "gan":
        return gan.train_gan(train.images, train.labels, gan.GanConfig(**common), Path(out), stop_after_steps,
                             log=log, save_grid=save_grid)
    cfg = DiffusionConfig(**common, schedule=schedule, amp=amp)
    return train_diffusion(train.images, train.labels, cfg, Path(out), stop_after_steps, log=log)


def loss_history(out: str | Path, every: int) -> list[tuple[int, dict]]:
    """A generator run's training loss averaged over each `every` steps: [(step, {"loss"} or {"loss_d",
    "loss_g"})], for tracking."""
    from . import gan
    out = Path(out)
    ckpt = next((p for p in (out / CHECKPOINT, out / gan.CHECKPOINT) if p.exists()), None)
    history = load_checkpoint(ckpt)["history"] if ckpt else []
    steps = []
    for end in range(every, len(history) + 1, every):
        part = history[end - every:end]
        values = [sum(v) / len(part) for v in zip(*part)] if isinstance(part[0], (list, tuple)) else \
            [sum(part) / len(part)]
        steps.append((end, dict(zip(("loss",) if len(values) == 1 else ("loss_d", "loss_g"), values))))
    return steps


def vary_data(model: str | Path, data: str | None, out: str | Path, strength: float, *, classes=(),
              per_class: int = 0, steps: int = 50, guidance: float = 2.0, batch: int = 100, seed: int = 0,
              amp: str = "auto", log=print) -> dict:
    """`imagefit generate vary`: variations of the training images of `data` (at most `per_class` a class, a seeded
    choice; the generator's classes unless `classes` narrows them), read at the generator's own image size."""
    from ..data.sources import per_class_subset
    if not 0 < strength <= 1:
        raise ImagefitError(f"--strength must be in (0, 1] (got {strength:g}); 0.3 keeps the layout, 1 is a new "
                            f"sample")
    if per_class < 0:
        raise ImagefitError(f"--per-class must be 0 (all) or more (got {per_class})")
    _, cfg = load_generator(model)
    train = _training_images(data, list(classes) or list(cfg.classes), cfg.size, seed, "vary")
    if per_class:
        train = train.subset(per_class_subset(train.labels, per_class, seed))
    return vary_folder(model, train.images, train.labels, train.classes, out, strength, steps=steps,
                       guidance=guidance, batch=batch, seed=seed, amp=amp, log=log)
