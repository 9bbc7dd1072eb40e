"""`imagefit generate train|sample|vary|eval`: generative models of the training images (`generate`, `gan`,
`quality`), each run tracked."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import add_json, add_tracking, add_unet_amp

NAME = "generate"
RESUME_HINT = ("the last checkpoint too: run the same 'imagefit generate' command again, it continues from "
               "--out")


def add_arguments(sub) -> None:
    gen = sub.add_parser("generate", help="generative models (diffusion, GAN) of the training images: train, sample, "
                                          "vary real images, score")
    gsub = gen.add_subparsers(dest="generate_command", required=True, metavar="STEP")
    p = gsub.add_parser("train", help="train a class-conditional DDPM or DCGAN (resumes when OUT holds a checkpoint)",
                        description="Train a class-conditional DDPM or DCGAN. Run it again with the same --out to "
                                    "continue from the checkpoint there (up to --steps in all: raise --steps to "
                                    "train longer).")
    p.add_argument("--data", help="data folder (default: $IMAGEFIT_DATA)")
    p.add_argument("--out", required=True, help="folder for the checkpoint and its sample grids")
    p.add_argument("--family", choices=("diffusion", "gan"), default="diffusion", help="generator family")
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="small",
                   help="network size: tiny (tests), small (CPU-hours), base (the DDPM paper's, for GPUs)")
    p.add_argument("--classes", help="only these classes (comma-separated names)")
    p.add_argument("--size", type=int, default=32, help="image side the generator learns and makes, in pixels; the "
                   "training images are resized to it (default: 32)")
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps in all (default: 20000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--schedule", choices=("linear", "cosine"), default="cosine", help="noise schedule")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after-steps", type=int, default=0, help="stop as if interrupted (resume later)")
    add_unet_amp(p)
    add_tracking(p)
    add_json(p)
    p = gsub.add_parser("sample", help="write synthetic images as an ImageFolder tree (resumable)")
    add_tracking(p)
    p.add_argument("--model", required=True, help="the folder 'generate train' wrote")
    p.add_argument("--out", required=True, help="folder for train/<class>/*.png")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default: 2)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot", type=int, metavar="STEP", help="sample from the weights kept at this training step "
                   "(the run's snapshots/, e.g. the last before a GAN collapsed) (default: the last)")
    add_unet_amp(p)
    add_json(p)
    p = gsub.add_parser("vary", help="diffuse-and-denoise variations of the real training images (resumable); "
                                     "mix them in with train --synthetic")
    p.add_argument("--model", required=True, help="the folder 'generate train' wrote (diffusion); the images are "
                                                  "read at its size")
    p.add_argument("--data", help="data folder whose training images to vary (default: $IMAGEFIT_DATA)")
    p.add_argument("--out", required=True, help="folder for train/<class>/<index>.png")
    p.add_argument("--strength", type=float, default=0.3, help="noise level as a share of the schedule (0, 1]")
    add_tracking(p)
    p.add_argument("--classes", help="only these classes (comma-separated names)")
    p.add_argument("--per-class", type=int, default=0, help="vary at most this many images per class (0: all)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule (default: 50)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    add_unet_amp(p)
    add_json(p)
    p = gsub.add_parser("eval", help="FID, KID, Inception Score and CAS of a generator or of a folder of its images")
    p.add_argument("--model", help="a 'generate train' folder: sample --per-class images per class from it")
    p.add_argument("--synthetic", help="or: a folder 'generate sample' wrote")
    p.add_argument("--data", help="the real data (training images for FID/KID; test split for CAS)")
    p.add_argument("--classifier", help="bundle trained on the real images: its features for FID/KID, its "
                                        "probabilities for IS")
    p.add_argument("--features", choices=("classifier", "inception"), default="classifier",
                   help="feature network (inception needs torch-fidelity and its downloaded weights)")
    p.add_argument("--per-class", type=int, default=100, help="--model: images sampled per class (default: 100)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--per-checkpoint", action="store_true", help="also the FID of every kept checkpoint, plotted")
    p.add_argument("--cas", action="store_true", help="also the Classification Accuracy Score (trains a classifier "
                                                      "on --synthetic, tests on --data's test split)")
    p.add_argument("--cas-recipe", help="recipe of the CAS classifier (default: quality.CAS_RECIPE, fast-small)")
    p.add_argument("--cas-epochs", type=int, default=0, help="its epochs (0: the recipe's)")
    add_tracking(p)
    p.add_argument("--seed", type=int, default=0)
    add_json(p)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _classes(args) -> list[str]:
    return [c.strip() for c in args.classes.split(",")] if args.classes else []


def run(args) -> dict:
    from ..files import check_writable
    from ..generative import generate
    if getattr(args, "out", None):
        check_writable(args.out)
    from ..tracking import check_store, record
    check_store(args.tracking_uri, args.experiment)  # a remote store that cannot be opened: refused before the work
    r = STEPS[args.generate_command](args)
    out = Path(r.get("out") or args.model or args.synthetic)
    scalars = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    artifacts = sorted(out.glob("samples-step*.png"))[-1:] + [out / "fid-per-step.png"]
    # the training loss, averaged over each checkpoint's interval
    steps = generate.loss_history(out, args.checkpoint_every) if args.generate_command == "train" else []
    params = {k: v for k, v in vars(args).items() if k not in ("json", "func") and v is not None}
    r["mlflow_run_id"] = record(args.tracking_uri, args.experiment, f"generate {args.generate_command} {out.name}",
                                params, scalars, artifacts, steps)
    return r


def _train(args) -> dict:
    from ..generative.generate import train_generator
    r = train_generator(args.data, args.out, family=args.family, preset=args.preset, classes=_classes(args),
                        size=args.size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        schedule=args.schedule, checkpoint_every=args.checkpoint_every, seed=args.seed,
                        stop_after_steps=args.stop_after_steps, amp=args.amp, log=_log)
    if r.get("warning"):
        _log(f"warning: {r['warning']}")  # said again at the end: a collapse mid-run scrolls away
    if not args.json:
        print(f"{r['stopped']} at step {r['step']}; checkpoint in {r['out']}")
    return r


def _sample(args) -> dict:
    from ..generative.generate import sample_folder
    r = sample_folder(args.model, args.out, args.per_class, steps=args.steps, guidance=args.guidance,
                      sampler=args.sampler, batch=args.batch_size, seed=args.seed, amp=args.amp,
                      snapshot=args.snapshot, log=_log)
    if not args.json:
        print(f"{r['written']} images in {r['seconds']} s ({r['images_per_s']:.2f}/s) under {r['out']}")
    return r


def _vary(args) -> dict:
    from ..generative.generate import vary_data
    r = vary_data(args.model, args.data, args.out, args.strength, classes=_classes(args), per_class=args.per_class,
                  steps=args.steps, guidance=args.guidance, batch=args.batch_size, seed=args.seed, amp=args.amp,
                  log=_log)
    if not args.json:
        print(f"{r['written']} variations at strength {args.strength:g} in {r['seconds']} s under {r['out']}")
    return r


def _eval(args) -> dict:
    from ..generative import quality
    r = quality.evaluate_generator(model=args.model, synthetic=args.synthetic, data=args.data,
                                   classifier=args.classifier, features=args.features, per_class=args.per_class,
                                   steps=args.steps, guidance=args.guidance, per_checkpoint=args.per_checkpoint,
                                   seed=args.seed, cas=args.cas, cas_recipe=args.cas_recipe,
                                   cas_epochs=args.cas_epochs, tracking_uri=args.tracking_uri, log=_log)
    if not args.json:
        line = f"FID {r['fid']:.2f}  KID {r['kid']:.4f} ± {r['kid_std']:.4f}  IS {r['inception_score']:.2f}"
        if "label_accuracy" in r:
            line += f"  label accuracy {r['label_accuracy']:.4f}"
        if "cas" in r:
            line += f"  CAS {r['cas']:.4f}"
        print(f"{line}  ({r['features']})")
    return r


STEPS = {"train": _train, "sample": _sample, "vary": _vary, "eval": _eval}
