"""What several commands share: the config flags (one per config field), the run and tracking options, --json,
and how an evaluation prints."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Config, all_fields, field_types, flag, recipe_names
from ..errors import ImagefitError


def add_json(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")


def add_tracking(p) -> None:
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///mlflow.db here; 'none': off)")
    p.add_argument("--experiment", default="imagefit", help="MLflow experiment name (default: imagefit)")


def add_unet_amp(p) -> None:
    p.add_argument("--amp", choices=("auto", "bf16", "no"), default="auto",
                   help="bfloat16 autocast of the UNet (auto: where the CPU has native bfloat16, AVX512-BF16 or AMX)")


def config_command(p: argparse.ArgumentParser, title: str, out_help: str):
    """The options of a command that builds a config: --recipe, --out and --json in group `title`, every config
    field after them. Returns the group, for the command's own options."""
    group = p.add_argument_group(title)
    group.add_argument("--recipe", help=f"recipe name ({', '.join(recipe_names())}) or path to a YAML file")
    group.add_argument("--out", help=out_help)
    add_json(group)
    add_config_flags(p)
    return group


def run_group(p: argparse.ArgumentParser):
    """config_command for the commands that train (and so track, stop and resume)."""
    run = config_command(p, "run", "run folder (default: runs/MODEL-TIMESTAMP)")
    add_tracking(run)
    run.add_argument("--stop-after-steps", type=int, default=0,
                     help="stop as if interrupted after this many optimizer steps (resume later)")
    run.add_argument("--progress", choices=("auto", "bar", "lines"), default="auto",
                     help="live bar (terminal) or one line per epoch")
    return run


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; values not given stay out of the namespace."""
    defaults = Config()
    groups = {}
    for section, f in all_fields():
        group = groups.setdefault(section, p.add_argument_group(section))
        default = getattr(getattr(defaults, section), f.name)
        kind = field_types(getattr(defaults, section))[f.name]
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        extra = f" [{'|'.join(f.metadata['choices'])}]" if f.metadata["choices"] else ""
        help_text = f"{f.metadata['help']}{extra}" + ("" if "default" in f.metadata["help"] else f" (default: {shown})")
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=help_text)


def given_options(args: argparse.Namespace) -> dict:
    """The config fields given on the command line, by name."""
    return {f.name: getattr(args, f.name) for _, f in all_fields() if f.name in vars(args)}


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the recipe, then the flags given on the command line (`imagefit.make_config`)."""
    from ..api import make_config
    return make_config(args.recipe, where="command line", **given_options(args))


def out_dir(args, name: str, empty: bool = False) -> Path:
    """--out, else runs/NAME-TIMESTAMP; with `empty`, refuse a folder that already holds something."""
    from ..api import default_out
    from ..files import check_writable
    out = check_writable(Path(args.out) if args.out else default_out(name))
    if empty and out.exists() and any(out.iterdir()):
        raise ImagefitError(f"{out} is not empty; choose another --out")
    return out


def run_options(args, out: Path):
    from ..training.train import RunOptions
    return RunOptions(out=out, tracking_uri=args.tracking_uri, experiment=args.experiment,
                      stop_after_steps=args.stop_after_steps, progress=args.progress)


def print_evaluation(m: dict, classes: list[str]) -> None:
    from ..evaluation.metrics import format_report
    if "members" in m:
        for r in m["members"]:
            print(f"member {r['bundle']}: accuracy {r['accuracy']:.4f} (tta {r['tta']})")
        print(f"ensemble ({m['vote']} voting of {len(m['members'])}): error {m['observed_error']:.4f}; independent "
              f"members would give {m['independent_error']:.4f}; members disagree on {m['disagreement']:.1%} of "
              f"images (pairwise)")
    elif "accuracy_without_tta" in m:
        print(f"accuracy {m['accuracy']:.4f} with TTA, {m['accuracy_without_tta']:.4f} without")
    print(format_report(m, classes))
