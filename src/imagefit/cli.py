"""`imagefit COMMAND`: thin shells over library functions.

Every command takes `--json` and then prints one JSON object as the last line of standard output; messages go
to standard error. An `ImagefitError` prints as one line without a traceback and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .allocator import keep_freed_memory
from .config import (TTA_MODES, Config, all_fields, check_fixed, coerce, field_types, flag, load_recipe,
                     recipe_names)
from .errors import ImagefitError


def _add_unet_amp(p) -> None:
    p.add_argument("--amp", choices=("auto", "bf16", "no"), default="auto",
                   help="bfloat16 autocast of the UNet (auto: where the CPU has native bfloat16, AVX512-BF16 or AMX)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train, evaluate and bundle a model",
                       description="Train a model, evaluate it on the test split, and save a bundle.")
    run = _run_group(p)
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run exactly where it stopped")
    return p


def _config_command(p: argparse.ArgumentParser, title: str, out_help: str):
    """The options of a command that builds a config: --recipe, --out and --json in group `title`, every config
    field after them. Returns the group, for the command's own options."""
    group = p.add_argument_group(title)
    group.add_argument("--recipe", help=f"recipe name ({', '.join(recipe_names())}) or path to a YAML file")
    group.add_argument("--out", help=out_help)
    _add_json(group)
    _add_config_flags(p)
    return group


def _run_group(p: argparse.ArgumentParser):
    """_config_command for the commands that train (and so track, stop and resume)."""
    run = _config_command(p, "run", "run folder (default: runs/MODEL-TIMESTAMP)")
    run.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///mlflow.db here; 'none': off)")
    run.add_argument("--experiment", default="imagefit", help="MLflow experiment name")
    run.add_argument("--stop-after-steps", type=int, default=0,
                     help="stop as if interrupted after this many optimizer steps (resume later)")
    run.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                     help="live bar (terminal) or one line per epoch")
    return run


def _add_tracking(p) -> None:
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///mlflow.db here; 'none': off)")
    p.add_argument("--experiment", default="imagefit", help="MLflow experiment name")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; values not given stay out of the namespace."""
    defaults = Config()
    groups = {}
    for section, f in all_fields():
        group = groups.setdefault(section, p.add_argument_group(section))
        default = getattr(getattr(defaults, section), f.name)
        kind = field_types(getattr(defaults, section))[f.name]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        extra = f" [{'|'.join(f.metadata['choices'])}]" if f.metadata["choices"] else ""
        help_text = f"{f.metadata['help']}{extra} (default: {shown})"
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=help_text)
    p.formatter_class = argparse.HelpFormatter  # defaults are in the help texts already


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="imagefit", description="From a folder of images to a tuned, "
                                     "reproducible, served ResNet classifier.")
    parser.add_argument("--version", action="version", version=f"imagefit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("find-lr", help="learning-rate range test: plot, suggestion, and two other rules",
                       description="Train briefly at exponentially growing rates and suggest the rate at the "
                                   "steepest descent of the smoothed loss (weights and optimizer are restored).")
    run = _config_command(p, "range test", "folder for lr_finder.png and lr_finder.json (default: "
                                           "runs/find-lr-TIMESTAMP)")
    run.add_argument("--start-lr", type=float, default=1e-7, help="first rate (default: 1e-7)")
    run.add_argument("--end-lr", type=float, default=10.0, help="last rate (default: 10)")
    run.add_argument("--steps", type=int, default=100, help="mini-batches at most (default: 100)")
    _add_tracking(run)

    p = sub.add_parser("fine-tune", help="transfer learning: train the head on a frozen body, then all layers",
                       description="fastai's recipe from trained weights (--pretrained imagenet or --init-from): "
                                   "stage 1 trains the head with the body frozen, stage 2 all layers with "
                                   "discriminative rates (--layer-lr-decay, default 2.6 here); each stage's rate "
                                   "from the range test unless --lr is given. Stages go to OUT/1-head, OUT/2-all.")
    run = _run_group(p)
    run.add_argument("--head-epochs", type=int, default=1, help="epochs of stage 1 (default: 1); --epochs sets "
                                                                 "stage 2")

    p = sub.add_parser("features", help="linear probe: a scikit-learn head on a frozen model's features",
                       description="Penultimate features of a frozen model (--pretrained imagenet or --init-from), "
                                   "then a linear SVM or logistic regression fitted on the training split and "
                                   "reported on the test split like any model.")
    run = _config_command(p, "probe", "folder for linear_probe.json (default: runs/features-TIMESTAMP)")
    run.add_argument("--head", choices=("svm", "logistic"), default="svm", help="the classifier (default: svm)")
    run.add_argument("--c", type=float, default=1.0, help="inverse regularization strength C (default: 1)")

    p = sub.add_parser("ensemble", help="train an ensemble (seeds, bagging, snapshot, boosting) and evaluate it",
                       description="Train --members members into OUT (seeds: different seeds; bagging: each on its "
                                   "own bootstrap sample; snapshot: the cycles of one cyclic run; boosting: SAMME, "
                                   "images reweighted toward earlier members' errors), write OUT/ensemble.json and "
                                   "report members and ensemble on the test split (soft voting; boosting: "
                                   "α-weighted hard voting). 'imagefit evaluate --bundle OUT' evaluates it again.")
    run = _run_group(p)
    run.add_argument("--members", type=int, default=5, help="number of members (default: 5)")
    run.add_argument("--kind", choices=("seeds", "bagging", "snapshot", "boosting"), default="seeds",
                     help="how members differ: seed, bootstrap sample (bagging), cycle of one cyclic run "
                          "(snapshot), or images reweighted toward the previous members' errors (boosting, SAMME)")

    p = sub.add_parser("report", help="error-analysis report of a run: one HTML page with its figures",
                       description="Write RUN/report/index.html: curves, confusion matrix, per-class metrics, most "
                                   "confused pairs, highest-loss test images, calibration, the finder's plot, "
                                   "and a robustness probe (rotated, blurred, shrunk, darkened, brightened).")
    p.add_argument("run", help="run folder (or its bundle.safetensors)")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--top", type=int, default=16, help="highest-loss images to show (default: 16)")
    _add_json(p)

    gen = sub.add_parser("generate", help="generative models (diffusion, GAN) of the training images: train, sample, "
                                          "vary real images, score")
    gsub = gen.add_subparsers(dest="generate_command", required=True, metavar="STEP")
    p = gsub.add_parser("train", help="train a class-conditional DDPM or DCGAN (resumes when OUT holds a checkpoint)")
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
    _add_unet_amp(p)
    _add_tracking(p)
    _add_json(p)
    p = gsub.add_parser("sample", help="write synthetic images as an ImageFolder tree (resumable)")
    _add_tracking(p)
    p.add_argument("--model", required=True, help="the folder 'generate train' wrote")
    p.add_argument("--out", required=True, help="folder for train/<class>/*.png")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default: 50)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default: 2)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    _add_unet_amp(p)
    _add_json(p)
    p = gsub.add_parser("vary", help="diffuse-and-denoise variations of the real training images (resumable); "
                                     "mix them in with train --synthetic")
    p.add_argument("--model", required=True, help="the folder 'generate train' wrote (diffusion)")
    p.add_argument("--data", help="data folder whose training images to vary (default: $IMAGEFIT_DATA)")
    p.add_argument("--out", required=True, help="folder for train/<class>/<index>.png")
    p.add_argument("--strength", type=float, default=0.3, help="noise level as a share of the schedule (0, 1]")
    _add_tracking(p)
    p.add_argument("--classes", help="only these classes (comma-separated names)")
    p.add_argument("--per-class", type=int, default=0, help="vary at most this many images per class (0: all)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the full schedule (default: 50)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    _add_unet_amp(p)
    _add_json(p)
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
    _add_tracking(p)
    p.add_argument("--seed", type=int, default=0)
    _add_json(p)

    p = sub.add_parser("evaluate", help="evaluate a bundle (or an ensemble of bundles) on a test split")
    p.add_argument("--bundle", required=True, action="append",
                   help="run folder or bundle.safetensors; repeat it to evaluate an ensemble")
    p.add_argument("--data", help="data folder (default: the one the (first) bundle was trained on)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation (default: the one each bundle was trained with)")
    p.add_argument("--tta-average", choices=("logits", "probs"), help="how views combine (default: the bundle's)")
    p.add_argument("--vote", choices=("soft", "hard"),
                   help="ensembles: mean probability (soft) or majority (hard, ties broken by probability); "
                        "default: the ensemble folder's (boosting: hard), else soft")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    _add_tracking(p)
    _add_json(p)

    p = sub.add_parser("predict", help="top-k classes for image files or folders")
    p.add_argument("--bundle", required=True, help="run folder, bundle.safetensors or an exported .onnx file")
    p.add_argument("paths", nargs="+", help="image files or folders of images")
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable files instead of stopping")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the bundle's; none is "
                                                    "fastest)")
    p.add_argument("--backend", choices=("auto", "onnx", "pytorch"), default="auto",
                   help="auto: ONNX Runtime when the run folder holds an export of this bundle, else PyTorch")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text", help="output format")
    p.add_argument("--batch-size", type=int, default=256)
    _add_json(p)

    p = sub.add_parser("search", help="hyperparameter search (Optuna) over config fields, on the validation split")
    p.add_argument("--space", help="YAML search space (recipe, fixed, objective, params, seeds)")
    p.add_argument("--trials", type=int, default=20, help="trials the study should reach, over all workers")
    p.add_argument("--out", default="runs/search", help="folder for trial runs, the study and best.yaml")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/optuna.db; postgresql://… for "
                                     "workers on many machines)")
    p.add_argument("--study", default="imagefit", help="study name (default: imagefit)")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    p.add_argument("--data", help="data folder (default: the space's, else $IMAGEFIT_DATA)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite:///mlflow.db; none: off)")
    p.add_argument("--experiment", default="imagefit")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--report", action="store_true", help="no new trials: best trials, importances, history plots")
    _add_json(p)

    p = sub.add_parser("export", help="export a bundle to ONNX or TorchScript (checked for parity on real images)")
    p.add_argument("--bundle", required=True, help="run folder or bundle.safetensors")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output file (default: model.onnx / model.torchscript.pt beside the bundle, where "
                                 "predict and serve find it)")
    p.add_argument("--data", help="data folder for the parity images (default: the bundle's)")
    p.add_argument("--parity-images", type=int, default=64)
    _add_json(p)

    p = sub.add_parser("serve", help="a web app and JSON API for a bundle (FastAPI under uvicorn)")
    p.add_argument("--bundle", required=True, help="run folder, bundle.safetensors or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("auto", "onnx", "pytorch"), default="auto")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the bundle's)")
    p.add_argument("--max-batch", type=int, default=32, help="largest micro-batch of queued images")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a micro-batch waits to fill")
    p.add_argument("--queue", type=int, default=256, help="images waiting at most; beyond it requests get 503")
    p.add_argument("--max-files", type=int, default=16, help="images per request at most")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="request body size limit")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image (width × height) decoded")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    p.set_defaults(json=False)

    p = sub.add_parser("models", help="list the model registry with parameter counts (10 classes)")
    _add_json(p)
    return parser


# ---------------------------------------------------------------------------------------------- commands

def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the recipe, then the flags given on the command line."""
    cfg = Config()
    if args.recipe:
        recipe = load_recipe(args.recipe)
        cfg.update(recipe, where=f"recipe {args.recipe}")
        given = {f.name: coerce(getattr(cfg, section), f.name, getattr(args, f.name), "command line")
                 for section, f in all_fields() if f.name in vars(args)}
        check_fixed(args.recipe, recipe, given)
    for section, f in all_fields():
        if f.name in vars(args):
            target = getattr(cfg, section)
            setattr(target, f.name, coerce(target, f.name, getattr(args, f.name), "command line"))
    return cfg.validate()


def cmd_train(args) -> dict:
    from .train import RunOptions, train
    given = [flag(f.name) for _, f in all_fields() if f.name in vars(args)]
    if args.resume:
        if given or args.recipe:
            raise ImagefitError(f"--resume continues a run with its saved config; drop {', '.join(given or ['--recipe'])} "
                                f"(or start a new run with another --out)")
        out, cfg = Path(args.resume), Config()
    else:
        cfg = config_from_args(args)
        out = _out_dir(args, cfg.model.model)
    opts = RunOptions(out=out, resume=bool(args.resume), tracking_uri=args.tracking_uri,
                      experiment=args.experiment, stop_after_steps=args.stop_after_steps, progress=args.progress)
    if cfg.data.folds and not args.resume:
        from .crossval import train_folds
        result = train_folds(cfg, opts)
        if not args.json:
            print(f"{result['folds']}-fold validation accuracy {result['val_accuracy_mean']:.4f} ± "
                  f"{result['val_accuracy_std']:.4f}; bundles under {result['run_dir']}/fold-*")
        return result
    result = train(cfg, opts)
    if result.get("rank"):  # another torchrun process: rank 0 reports for all
        args.json = False
        return result
    if not args.json and "accuracy" in result:
        print(f"test accuracy {result['accuracy']:.4f} (top-5 {result['top5']:.4f}) on {result['n']} images; "
              f"bundle {result['bundle']}")
    return result


def cmd_find_lr(args) -> dict:
    from . import plots
    from .files import atomic_write_text
    from .train import RunOptions, Trainer
    if getattr(args, "lr", None) == "auto":
        raise ImagefitError("find-lr sweeps the rate itself; drop --lr auto")
    cfg = config_from_args(args)
    if cfg.optim.optimizer == "muon":
        raise ImagefitError("find-lr sweeps one rate, and --optimizer muon has two (--lr, --muon-lr); "
                            "use --optimizer sgd or adamw")
    out = _out_dir(args, "find-lr")
    trainer = Trainer(cfg, RunOptions(out=out, tracking_uri="none"))
    result = trainer.range_test(start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "lr_finder.json", json.dumps(result.to_dict(), indent=1))
    plot = plots.lr_finder(result, out / "lr_finder.png")
    from .tracking import record
    record(args.tracking_uri, args.experiment, f"find-lr {out.name}", cfg.to_dict(),
           {"suggestion": result.suggestion, "valley": result.valley, "minimum_10": result.minimum_10},
           [plot, out / "lr_finder.json"], steps=[(i, {"lr": lr, "loss": loss, "smoothed": sm}) for i, (lr, loss, sm)
                                                 in enumerate(zip(result.lrs, result.losses, result.smoothed))])
    if not args.json:
        print(f"suggested rate {result.suggestion:.2e} (steepest descent of the smoothed loss); valley "
              f"{result.valley:.2e}, minimum/10 {result.minimum_10:.2e}; {len(result.lrs)} steps, {result.stopped}; "
              f"plot {plot}")
        if result.warning:
            print(f"warning: {result.warning}")
    return {"suggestion": result.suggestion, "steepest": result.steepest, "valley": result.valley,
            "minimum_10": result.minimum_10, "steps": len(result.lrs), "stopped": result.stopped,
            "warning": result.warning, "plot": str(plot), "out": str(out)}


def _out_dir(args, name: str, empty: bool = False) -> Path:
    """--out, else runs/NAME-TIMESTAMP; with `empty`, refuse a folder that already holds something."""
    from datetime import datetime
    out = Path(args.out or f"runs/{name}-{datetime.now():%Y%m%d-%H%M%S}")
    if empty and out.exists() and any(out.iterdir()):
        raise ImagefitError(f"{out} is not empty; choose another --out")
    return out


def _run_options(args, out: Path):
    from .train import RunOptions
    return RunOptions(out=out, tracking_uri=args.tracking_uri, experiment=args.experiment,
                      stop_after_steps=args.stop_after_steps, progress=args.progress)


def cmd_fine_tune(args) -> dict:
    from .transfer import fine_tune
    cfg = config_from_args(args)
    out = _out_dir(args, "fine-tune", empty=True)
    result = fine_tune(cfg, _run_options(args, out), args.head_epochs, lr_given="lr" in vars(args))
    if not args.json:
        print(f"fine-tuned: test accuracy {result['accuracy']:.4f} (head only: {result['head']['accuracy']:.4f}); "
              f"bundle {result['bundle']}")
    return result


def cmd_features(args) -> dict:
    from .transfer import linear_probe
    cfg = config_from_args(args)
    out = _out_dir(args, "features")
    if args.c <= 0:
        raise ImagefitError(f"--c must be above 0 (got {args.c:g})")
    result = linear_probe(cfg, out, args.head, args.c)
    report = result.pop("report")
    if not args.json:
        print(f"{args.head} on {result['features']} features of {result['start']}, {result['train_images']} "
              f"training images\n{report}")
    return result


def cmd_ensemble(args) -> dict:
    from .ensemble import train_ensemble
    cfg = config_from_args(args)
    out = _out_dir(args, "ensemble", empty=True)
    m, first = train_ensemble(cfg, _run_options(args, out), args.members, args.kind)
    if not args.json:
        _print_evaluation(m, first.classes)
    return {**m, "ensemble": str(out)}


def cmd_report(args) -> dict:
    from .report import build_report
    if args.top < 1:
        raise ImagefitError(f"--top must be 1 or more (got {args.top})")
    page = build_report(args.run, data=args.data, top=args.top)
    summary = json.loads((page.parent / "report.json").read_text())
    if not args.json:
        print(f"report {page} (accuracy {summary['accuracy']:.4f}, calibration error {summary['ece']:.4f})")
    return {"report": str(page), **summary}


def cmd_generate(args) -> dict:
    from .tracking import record
    r = _generate(args)
    out = Path(r.get("out") or args.model or args.synthetic)
    scalars = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    steps, artifacts = [], sorted(out.glob("samples-step*.png"))[-1:] + [out / "fid-per-step.png"]
    if args.generate_command == "train":  # the loss, averaged over each checkpoint's interval
        from .checkpoint import load_checkpoint
        ckpt = next((p for p in (out / "diffusion.pt", out / "gan.pt") if p.exists()), None)
        history = load_checkpoint(ckpt)["history"] if ckpt else []
        every = args.checkpoint_every
        for end in range(every, len(history) + 1, every):
            part = history[end - every:end]
            values = [sum(v) / len(part) for v in zip(*part)] if isinstance(part[0], (list, tuple)) else \
                [sum(part) / len(part)]
            steps.append((end, dict(zip(("loss",) if len(values) == 1 else ("loss_d", "loss_g"), values))))
    params = {k: v for k, v in vars(args).items() if k not in ("json", "func") and v is not None}
    r["mlflow_run_id"] = record(args.tracking_uri, args.experiment, f"generate {args.generate_command} {out.name}",
                                params, scalars, artifacts, steps)
    return r


def _generate(args) -> dict:
    from . import generate

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.generate_command == "eval":
        return _generate_eval(args, log)
    if args.generate_command == "vary":
        return _generate_vary(args, log)
    if args.generate_command == "sample":
        r = generate.sample_folder(args.model, args.out, args.per_class, steps=args.steps, guidance=args.guidance,
                                   sampler=args.sampler, batch=args.batch_size, seed=args.seed, amp=args.amp,
                                   log=log)
        if not args.json:
            print(f"{r['written']} images in {r['seconds']} s ({r['images_per_s']:.2f}/s) under {r['out']}")
        return r
    from .config import Config, DataConfig
    from .data import ImageSet, load_splits
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else []
    for name, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--checkpoint-every", args.checkpoint_every, 1)):
        if value < low:
            raise ImagefitError(f"{name} must be {low} or more (got {value})")
    data_cfg = DataConfig(data=args.data, val_fraction=0.0, classes=classes, size=args.size)
    Config(data=data_cfg).validate()  # --size: the data path's own range
    data = load_splits(data_cfg, args.seed)
    if not isinstance(data.train, ImageSet):
        raise ImagefitError(f"{data.source} is streamed from disk; 'generate train' needs it in memory")
    common = dict(preset=args.preset, size=data.train.images.shape[-1], classes=tuple(data.classes), steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.checkpoint_every, seed=args.seed)
    from . import gan
    other = Path(args.out) / (generate.CHECKPOINT if args.family == "gan" else gan.CHECKPOINT)
    if other.exists():
        raise ImagefitError(f"{args.out} holds a {'diffusion' if args.family == 'gan' else 'GAN'} run "
                            f"({other.name}); pass its --family to resume it, or a new --out")
    if args.family == "gan":
        from .gan import GanConfig, train_gan
        r = train_gan(data.train.images, data.train.labels, GanConfig(**common), Path(args.out),
                      args.stop_after_steps, log=log, save_grid=generate.save_grid)
    else:
        cfg = generate.DiffusionConfig(**common, schedule=args.schedule, amp=args.amp)
        r = generate.train_diffusion(data.train.images, data.train.labels, cfg, Path(args.out), args.stop_after_steps,
                                     log=log)
    if not args.json:
        print(f"{r['stopped']} at step {r['step']}; checkpoint in {r['out']}")
    return r


def _generate_vary(args, log) -> dict:
    from . import generate
    from .config import DataConfig
    from .data import ImageSet, load_splits, per_class_subset
    if not 0 < args.strength <= 1:
        raise ImagefitError(f"--strength must be in (0, 1] (got {args.strength:g}); 0.3 keeps the layout, 1 is a "
                            f"new sample")
    if args.per_class < 0:
        raise ImagefitError(f"--per-class must be 0 (all) or more (got {args.per_class})")
    # the generator's classes unless --classes narrows them
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else \
        list(generate.load_generator(args.model)[1].classes)
    data = load_splits(DataConfig(data=args.data, val_fraction=0.0, classes=classes), args.seed)
    if not isinstance(data.train, ImageSet):
        raise ImagefitError(f"{data.source} is streamed from disk; 'generate vary' needs it in memory")
    train = data.train.subset(per_class_subset(data.train.labels, args.per_class, args.seed)) if args.per_class \
        else data.train
    r = generate.vary_folder(args.model, train.images, train.labels, data.classes, args.out, args.strength,
                             steps=args.steps, guidance=args.guidance, batch=args.batch_size, seed=args.seed,
                             amp=args.amp, log=log)
    if not args.json:
        print(f"{r['written']} variations at strength {args.strength:g} in {r['seconds']} s under {r['out']}")
    return r


def _generate_eval(args, log) -> dict:
    from . import quality
    r = quality.evaluate_generator(model=args.model, synthetic=args.synthetic, data=args.data,
                                   classifier=args.classifier, features=args.features, per_class=args.per_class,
                                   steps=args.steps, guidance=args.guidance, per_checkpoint=args.per_checkpoint,
                                   seed=args.seed, log=log)
    if args.cas:
        synthetic = args.synthetic
        if synthetic is None:
            from .generate import sample_folder
            synthetic = str(Path(args.model) / "cas-samples")
            sample_folder(args.model, synthetic, args.per_class, steps=args.steps, guidance=args.guidance,
                          seed=args.seed, log=log)
        r.update(quality.classification_accuracy_score(synthetic, args.data, Path(synthetic) / "cas-run",
                                                       recipe=args.cas_recipe, tracking_uri=args.tracking_uri,
                                                       epochs=args.cas_epochs))
    if not args.json:
        line = f"FID {r['fid']:.2f}  KID {r['kid']:.4f} ± {r['kid_std']:.4f}  IS {r['inception_score']:.2f}"
        if "label_accuracy" in r:
            line += f"  label accuracy {r['label_accuracy']:.4f}"
        if "cas" in r:
            line += f"  CAS {r['cas']:.4f}"
        print(f"{line}  ({r['features']})")
    return r


def cmd_evaluate(args) -> dict:
    from . import plots
    from .ensemble import evaluate_bundles
    from .train import resolve_device
    m, first = evaluate_bundles(args.bundle, data=args.data, split=args.split, batch_size=args.batch_size,
                                tta=args.tta, tta_average=args.tta_average, vote=args.vote,
                                device=resolve_device(args.device))
    try:
        m["confusion_png"] = str(plots.confusion_matrix(m["confusion"], first.classes,
                                                        first.path.parent / f"confusion-{args.split}.png"))
    except OSError:
        pass  # a read-only bundle folder: the numbers still print
    from .tracking import record
    scalars = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    m["mlflow_run_id"] = record(args.tracking_uri, args.experiment, f"evaluate {first.path.parent.name}",
                                {"bundles": ",".join(args.bundle), "split": args.split, "data": args.data,
                                 "tta": args.tta, "vote": args.vote}, scalars, [m.get("confusion_png", "")])
    if not args.json:
        _print_evaluation(m, first.classes)
    return {**m, "split": args.split, "bundle": args.bundle[0] if len(args.bundle) == 1 else args.bundle}


def _print_evaluation(m: dict, classes: list[str]) -> None:
    from .evaluate import format_report
    if "members" in m:
        for r in m["members"]:
            print(f"member {r['bundle']}: accuracy {r['accuracy']:.4f} (tta {r['tta']})")
        print(f"ensemble ({m['vote']} voting of {len(m['members'])}): error {m['observed_error']:.4f}; independent "
              f"members would give {m['independent_error']:.4f}; members disagree on {m['disagreement']:.1%} of "
              f"images (pairwise)")
    elif "accuracy_without_tta" in m:
        print(f"accuracy {m['accuracy']:.4f} with TTA, {m['accuracy_without_tta']:.4f} without")
    print(format_report(m, classes))


def _image_files(paths: list[str]) -> list[str]:
    from .data import IMAGE_EXTENSIONS
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImagefitError(f"folder {p} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        elif p.is_file():
            files.append(str(p))
        else:
            raise ImagefitError(f"{p} does not exist; give image files or folders of images")
    return files


def cmd_predict(args) -> dict:
    from .data import decode_files
    from .inference import load_predictor
    if args.top_k < 1:
        raise ImagefitError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.batch_size < 1:
        raise ImagefitError(f"--batch-size must be at least 1 (got {args.batch_size})")
    predictor = load_predictor(args.bundle, args.backend)
    files = _image_files(args.paths)
    p = predictor.preprocessing
    k = min(args.top_k, len(predictor.classes))
    results = []
    chunks = range(0, len(files), args.batch_size)
    if sys.stderr.isatty() and len(chunks) > 1:
        from rich.progress import track
        from rich.console import Console
        chunks = track(chunks, description="predicting", console=Console(file=sys.stderr), transient=True)
    for start in chunks:
        names = files[start:start + args.batch_size]
        images, keep = decode_files(names, p["size"], p["resize"], args.skip_bad_images)
        if not keep:
            continue
        top = predictor.probabilities(images, args.tta).topk(k, dim=1)
        for i, (values, indices) in zip(keep, zip(top.values.tolist(), top.indices.tolist())):
            results.append({"file": names[i], "top": [{"class": predictor.classes[c], "probability": round(v, 6)}
                                                      for v, c in zip(values, indices)]})
    if not args.json:
        if args.format == "json":
            print(json.dumps(results, indent=1))
        elif args.format == "csv":
            import csv
            writer = csv.writer(sys.stdout)
            writer.writerow(["file"] + [f"{kind}{j + 1}" for j in range(k) for kind in ("class", "probability")])
            for r in results:
                writer.writerow([r["file"]] + [v for t in r["top"] for v in (t["class"], t["probability"])])
        else:
            for r in results:
                print(f"{r['file']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    return {"predictions": results, "n": len(results), "bundle": str(args.bundle), "backend": predictor.backend}


def cmd_search(args) -> dict:
    from . import search
    storage = args.storage or f"sqlite:///{(Path(args.out) / 'optuna.db').resolve()}"
    if args.report:
        r = search.report(storage, args.study, args.out)
        if not args.json:
            _print_study(r, f"plots under {Path(args.out) / 'report'}")
        return r
    if not args.space:
        raise ImagefitError("--space SPACE.yaml is required to run trials (or pass --report)")
    r = search.search(args.space, args.trials, args.out, storage=storage, study_name=args.study,
                      sampler=args.sampler, pruner=args.pruner, data=args.data, tracking_uri=args.tracking_uri,
                      experiment=args.experiment, seed=args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    if not args.json:
        _print_study(r, f"recipe {r.get('best_recipe')}")
    return r


def _print_study(r: dict, where: str) -> None:
    """A study's counts and best trial, then (from --report) its top trials and importances, then whether the
    best really beats the base config."""
    from .search import describe_margin
    print(f"study {r['study']}: {r['trials']}; best {r.get('best_value', float('nan')):.4f} "
          f"{json.dumps(r.get('best_params', {}))}; {where}")
    for t in r.get("best_trials", []):
        print(f"  trial {t['trial']:>4}  {t['value']:.4f}  {json.dumps(t['params'])}")
    if r.get("importances"):
        print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importances"].items()))
    if describe_margin(r):
        print("  " + describe_margin(r))


def cmd_export(args) -> dict:
    from .export import export
    r = export(args.bundle, args.format, args.out, args.data, args.parity_images)
    if not args.json:
        print(f"{r['export']} ({r['bytes'] / 1e6:.1f} MB); parity on {r['parity_images']} real images: max |logit "
              f"difference| {r['parity_max_abs_diff']:.1e}")
    return r


def cmd_serve(args) -> dict:
    from .serve import ServeOptions, run_server
    opts = ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                        max_files=args.max_files, max_upload_bytes=int(args.max_upload_mb * 1e6),
                        max_pixels=args.max_pixels, tta=args.tta)
    run_server(args.bundle, args.host, args.port, opts, backend=args.backend, threads=args.threads)
    return {}


def cmd_models(args) -> dict:
    from .config import ModelConfig
    from .models import REGISTRY, count_params, create_model
    rows = {name: count_params(create_model(10, ModelConfig(model=name))) for name in sorted(REGISTRY)}
    if not args.json:
        for name, n in rows.items():
            print(f"{name:>10} {n:>12,} parameters")
    return {"models": rows}


COMMANDS = {"train": cmd_train, "find-lr": cmd_find_lr, "fine-tune": cmd_fine_tune, "features": cmd_features,
            "ensemble": cmd_ensemble, "report": cmd_report, "generate": cmd_generate,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "search": cmd_search, "export": cmd_export, "serve": cmd_serve,
            "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    try:
        result = COMMANDS[args.command](args)
    except ImagefitError as e:
        print(f"imagefit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"imagefit {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    return 0
