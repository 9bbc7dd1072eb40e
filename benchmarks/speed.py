"""Time to accuracy: imagefit's recipes and the airbench anchor, over seeds, in one run on one machine.

    python benchmarks/speed.py --data DIR --recipes fast --anchors airbench94-small --seeds 3

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10 (45,000 train, 5,000 held-out as the test
split). Every run trains in this process; after each epoch the held-out accuracy (with the run's TTA) is measured
and its time taken off the clock, so a curve point is (seconds the run would have taken to get here, accuracy).
A recipe's clock runs from the call of `imagefit.training.train.train` (data loading, whitening, MLflow in a fresh SQLite
store, training, the final TTA test, plots and bundle: everything `imagefit train` does after its imports) to its
return; the interpreter start and imports are timed once and added. An anchor's clock covers its training and
final TTA test only (it has no loading or bundling to do here).

With --keep DIR a run longer than one sitting survives it: each run's folder, MLflow store and curve points live
under DIR, a run stopped mid-way resumes from its last epoch (`imagefit train --resume`) when the same command runs
again, and a finished run is read back, not trained again. A resumed run's wall is the sum of its sittings up to
the checkpoint each left: every sitting's start, imports and data loading count; a stop by a signal (Ctrl-C, SIGTERM)
checkpoints mid-epoch and keeps its part-epoch, while the part-epoch a kill threw away is neither kept nor counted.

Prints one row per recipe/anchor: held-out accuracy mean ± std over seeds, wall seconds, FLOPs counted with
torch.utils.flop_counter (training steps at their image sizes, plus the test views) and the training GFLOP/s
achieved; writes the runs as JSON and the curves as a PNG beside it (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from anchor import ANCHORS, AnchorNet, anchor_accuracy, count_flops, train_anchor  # noqa: E402

from imagefit.allocator import keep_freed_memory  # noqa: E402
from imagefit.checkpoint import load_checkpoint  # noqa: E402
from imagefit.config import Config, DataConfig, all_fields, coerce, load_recipe  # noqa: E402
from imagefit.data.sources import load_splits  # noqa: E402
from imagefit.evaluation.evaluate import gather_logits  # noqa: E402
from imagefit.files import atomic_write_text  # noqa: E402
from imagefit.models import EpochAware, create_model  # noqa: E402
from imagefit.runtime import resolve_amp, resolve_device  # noqa: E402
from imagefit.training.train import RunOptions, train  # noqa: E402

TTA_VIEWS = {"none": 1, "flip": 2, "crops": 3, "flip+crops": 6}


def machine_description() -> str:
    """The CPU this ran on, as the figures depend on it: model, family (26 = Zen 5), cores, native bfloat16; and the
    GPU, where there is one."""
    from imagefit.runtime import cpu_has_native_bf16
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    gpu = f"; GPU {torch.cuda.get_device_name()} (rows run there unless they say device=cpu)" if (
        torch.cuda.is_available()) else ""
    return (f"{info.get('model name', platform.processor() or platform.machine())} family {info.get('cpu family', '?')}"
            f", {torch.get_num_threads()} threads, native bf16 {'yes' if cpu_has_native_bf16() else 'no'}{gpu}")


def import_seconds() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import imagefit.cli, imagefit.training.train"], check=True)
    return time.perf_counter() - t


def training_flops(model: torch.nn.Module, batch: int, steps_per_epoch: int, sizes: list[int],
                   whiten_bias_epochs: int) -> int:
    """Σ over epochs of steps × FLOPs of one step at that epoch's image size (and whitening-bias gradient)."""
    total, cache = 0, {}
    for epoch, size in enumerate(sizes):
        key = (size, epoch < whiten_bias_epochs)
        if key not in cache:
            if isinstance(model, EpochAware):  # the fast nets' whitening bias trains in early epochs only
                model.set_epoch(epoch)
            x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
            cache[key] = count_flops(model, x, y, train=True)
        total += cache[key] * steps_per_epoch
    return total


def eval_flops(model: torch.nn.Module, n: int, size: int, tta: str) -> int:
    return count_flops(model, torch.randn(1, 3, size, size), None, train=False) * n * TTA_VIEWS[tta]


def recipe_config(spec: str) -> Config:
    """A recipe name or path, optionally with field overrides: `fast@progressive_sizes=;epochs=3`."""
    name, _, overrides = spec.partition("@")
    cfg = Config.from_dict(load_recipe(name), where=name)
    sections = {f.name: section for section, f in all_fields()}
    for item in filter(None, overrides.split(";")):
        field, _, value = item.partition("=")
        if field not in sections:
            raise SystemExit(f"{spec}: no config field '{field}'")
        target = getattr(cfg, sections[field])
        setattr(target, field, coerce(target, field, value, spec))
    return cfg


def run_name(row: str, seed: int) -> str:
    """The folder (and record) name of one run under --keep."""
    return re.sub(r"[^\w.-]+", "_", row) + f"-seed{seed}"


def run_recipe(recipe: str, data: str, seed: int, startup: float, curve_tta: str | None,
               keep: Path | None = None, tracking_uri: str | None = None) -> dict:
    cfg = recipe_config(recipe)
    cfg.data.data, cfg.train.seed = data, seed
    cfg.validate()
    curve, off_clock, steps = [], [0.0], []
    with tempfile.TemporaryDirectory() as tmp:
        home = keep / run_name(recipe, seed) if keep else Path(tmp)
        run_dir, curve_file = home / "run", home / "curve.json"
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        before = 0.0  # the wall of the earlier sittings, up to the checkpoint this one resumes from
        if resume:  # the curve points of the epochs the checkpoint kept, and the wall they had taken
            saved, at = json.loads(curve_file.read_text()), load_checkpoint(run_dir / "checkpoints" / "last.pt")
            curve += saved["curve"][:at["epoch"]]
            steps.append(saved["steps_per_epoch"])
            stopped = saved.get("stopped_at")  # [epoch, step, wall] of a sitting stopped mid-epoch by a signal
            before = stopped[2] if stopped and stopped[:2] == [at["epoch"], at["step"]] else (
                curve[-1][0] if curve else 0.0)  # killed: the part-epoch after the last epoch's checkpoint is lost
            print(f"{recipe} seed {seed}: resuming {run_dir} at epoch {at['epoch'] + 1}, step {at['step']}", flush=True)
        elif run_dir.exists():  # killed in its first epoch: nothing to resume, and train wants an empty folder
            shutil.rmtree(run_dir)

        def save_curve(**extra) -> None:  # the run's state under --keep: after each epoch, and at a signal's stop
            if keep:
                atomic_write_text(curve_file, json.dumps({"steps_per_epoch": steps[0] if steps else None,
                                                          "curve": curve, **extra}))

        def held_out(trainer, row):
            t = time.perf_counter()
            steps[:] = [len(trainer.train_loader)]
            logits, labels = gather_logits(trainer.eval_model, trainer.test_loader, tta=curve_tta or cfg.train.tta)
            seconds = before + t - start - off_clock[0] + startup
            curve.append([round(seconds, 1), (logits.argmax(1) == labels).float().mean().item()])
            save_curve()
            off_clock[0] += time.perf_counter() - t

        home.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = train(cfg, RunOptions(out=run_dir, resume=resume, progress="lines", on_epoch_end=held_out,
                                       tracking_uri=tracking_uri or f"sqlite:///{home.resolve()}/mlflow.db"))
        wall = before + time.perf_counter() - start - off_clock[0] + startup
    if result.get("stopped") == "interrupted":
        save_curve(stopped_at=[result["epoch"], result["step"], round(wall, 1)])
        raise SystemExit(f"{recipe} seed {seed} stopped after epoch {result['epoch']}"
                         + ("; run the same command again to resume it" if keep else " (resumable with --keep DIR)"))
    # printed before anything else can fail: a ResNet18 run once lost 1.7 hours to the FLOP count below
    print(f"{recipe} seed {seed}: held-out {100 * result['accuracy']:.2f}%, wall {wall:.1f} s, "
          f"training {result['seconds']:.1f} s", flush=True)
    model = create_model(10, cfg.model)
    flops = training_flops(model, cfg.train.batch_size, steps[0], cfg.epoch_sizes(), cfg.model.whiten_bias_epochs)
    precision = {"bf16": "bfloat16", "fp16": "float16"}.get(
        resolve_amp(resolve_device(cfg.train.device), cfg.train.amp), "float32")
    return {"row": recipe, "seed": seed, "accuracy": result["accuracy"], "wall_s": round(wall, 1),
            "ece": result.get("ece"), "temperature": result.get("temperature"), "precision": precision, "train_s": result["seconds"], "train_flops": flops,
            "eval_flops": eval_flops(model, result["n"], cfg.data.size, cfg.train.tta), "curve": curve}


def run_anchor(name: str, data: str, seed: int, curve_tta: str | None) -> dict:
    splits = load_splits(DataConfig(data=data, val_fraction=0.0), seed)
    curve, off_clock = [], [0.0]

    def held_out(model, epoch, seconds):
        t = time.perf_counter()
        accuracy = anchor_accuracy(model, splits, normalize_ref[0], curve_tta or "flip+crops", name)
        curve.append([round(seconds, 1), accuracy])
        off_clock[0] += time.perf_counter() - t

    from imagefit.preprocessing import Normalize
    normalize_ref = [Normalize(splits.mean, splits.std, True)]
    start = time.perf_counter()
    out = train_anchor(name, splits, seed, on_epoch_end=held_out)
    accuracy = anchor_accuracy(out["model"], splits, out["normalize"], name=name)
    wall = time.perf_counter() - start - off_clock[0]
    widths, batch, epochs = ANCHORS[name]
    model = AnchorNet(widths)
    flops = training_flops(model, batch, len(splits.train) // batch, [32] * epochs, 3)
    return {"row": name, "seed": seed, "accuracy": accuracy, "wall_s": round(wall, 1),
            "precision": "bfloat16" if name.endswith("-bf16") else "float32",
            "train_s": round(out["seconds"], 1), "train_flops": flops,
            "eval_flops": eval_flops(model, len(splits.test), 32, "flip+crops"), "curve": curve}


def summary(runs: list[dict], peak: dict | None = None) -> list[dict]:
    """One row per recipe/anchor: means over seeds; with `peak` (probes/peak.py's ceilings), the training rate as a
    share of the 3x3-convolution ceiling in the row's precision (bfloat16 where it trained in it)."""
    rows = []
    for name in dict.fromkeys(r["row"] for r in runs):
        rs = [r for r in runs if r["row"] == name]
        acc = [r["accuracy"] for r in rs]
        rows.append({"row": name, "seeds": len(rs), "accuracy_mean": statistics.mean(acc),
                     "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
                     "pflop": (rs[0]["train_flops"] + rs[0]["eval_flops"]) / 1e15,
                     "train_gflops_per_s": statistics.mean(r["train_flops"] / r["train_s"] / 1e9 for r in rs)})
        if peak:
            bf16 = rs[0].get("precision", "float32") == "bfloat16"
            rows[-1]["share_of_ceiling"] = rows[-1]["train_gflops_per_s"] / peak[
                f"conv3x3_{'bf16' if bf16 else 'fp32'}_gflops"]
    return rows


def unknown_control(control: str | None, rows: list[str]) -> str | None:
    """The one-line error for a --control that names none of the rows (None when it is fine or not given)."""
    if control and control not in rows:
        return f"--control {control!r} is none of the rows ({', '.join(dict.fromkeys(rows))}): name one of them"
    return None


def against_control(runs: list[dict], control: str) -> list[dict]:
    """Issue 30's rule, for each row beside `control`: a row pays when its mean accuracy beats the control's by more
    than the larger of the two rows' seed-to-seed ranges (max - min). One seed has no range, so a row or control
    with fewer than two seeds gets no verdict (`pays` None) rather than a bar of zero."""
    rows = {r["row"]: r for r in summary(runs)}

    def spread(name: str) -> float | None:
        acc = [r["accuracy"] for r in runs if r["row"] == name]
        return max(acc) - min(acc) if len(acc) > 1 else None

    base, base_spread = rows[control], spread(control)
    verdicts = []
    for name, row in rows.items():
        if name == control:
            continue
        ranges = [base_spread, spread(name)]
        bar = None if None in ranges else max(ranges)
        diff = row["accuracy_mean"] - base["accuracy_mean"]
        verdicts.append({"row": name, "diff": diff, "bar": bar, "pays": None if bar is None else diff > bar,
                         "wall_ratio": row["wall_s_mean"] / base["wall_s_mean"]})
    return verdicts


def plot(runs: list[dict], path: Path, curve_tta: str | None, logx: bool = False) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for r in runs:
        first = r["row"] not in colors
        c = colors.setdefault(r["row"], f"C{len(colors)}")
        xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(xs, [100 * y for y in ys], "-o", color=c, ms=3, alpha=0.8, label=r["row"] if first else None)
        ax.plot([r["wall_s"]], [100 * r["accuracy"]], "*", color=c, ms=10)
    ax.set_xlabel("wall seconds (evaluation off the clock); ★ = end of run, final TTA test included")
    if curve_tta:
        ax.set_title(f"curve points with TTA '{curve_tta}', ★ with each run's own", fontsize=9)
    ax.set_ylabel("held-out accuracy, %")
    if logx:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="the folder holding cifar-10-batches-py (required unless --plot)")
    p.add_argument("--recipes", nargs="*", default=["fast"], help="recipe names or paths, each optionally with "
                   "overrides after @ ('fast@progressive_sizes=16,20;epochs=3'); none given: none")
    p.add_argument("--anchors", default="airbench94-small", help=f"comma-separated: {', '.join(ANCHORS)} ('' for none)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and the PNG")
    p.add_argument("--curve-tta", choices=tuple(TTA_VIEWS), help="views for the per-epoch curve points (default: "
                   "each run's own TTA; 'none' makes them 6x cheaper on the real clock, the final point keeps it)")
    p.add_argument("--peak", action="store_true", help="measure the machine's 3x3-convolution ceilings first "
                   "(probes/peak.py) and print each row's training GFLOP/s as a share of the one in its precision")
    p.add_argument("--keep", metavar="DIR", help="keep each run under DIR: run the same command again and a run "
                   "stopped mid-way resumes from its last epoch, a finished one is read back (runs longer than a sitting)")
    p.add_argument("--tracking-uri", help="MLflow store for the recipes' runs (default: one SQLite store per run, "
                   "under --keep or a temporary folder; 'none': untracked, as on a machine without MLflow)")
    p.add_argument("--plot", nargs="+", metavar="JSON", help="train nothing: draw the runs of earlier speed.py JSON "
                   "files in one plot under --out and print their rows (curves of runs made at different times)")
    p.add_argument("--control", metavar="ROW", help="also print each other row against this one: its mean's "
                   "difference, the bar (the larger seed range of the two) and whether it pays (beats the bar)")
    args = p.parse_args()
    if args.plot:
        return replot([Path(f) for f in args.plot], Path(args.out), args.control)
    if not args.data:
        p.error("--data DIR is required to train (or --plot JSON ... to draw earlier runs)")
    recipes, anchors = args.recipes, list(filter(None, args.anchors.split(",")))
    if error := unknown_control(args.control, recipes + anchors):  # before hours of training, not after
        p.error(error)
    peak = None
    if args.peak:
        sys.path.insert(0, str(Path(__file__).parent / "probes"))
        from peak import ceilings
        peak = ceilings(2.0)
        print(f"3x3-convolution ceilings: float32 {peak['conv3x3_fp32_gflops']:.0f}, bfloat16 "
              f"{peak['conv3x3_bf16_gflops']:.0f} GFLOP/s", flush=True)
    keep_freed_memory()  # as `imagefit` does at start: every row, anchors included, on the same allocator
    startup = import_seconds()
    cpu = machine_description()
    print(f"interpreter start + imports: {startup:.1f} s; {cpu}, torch {torch.__version__}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(Path(r.partition("@")[0]).stem + ("-variant" if "@" in r else "") for r in recipes + anchors)
    stem = out / f"speed-{date.today()}-{tag}"
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(args.seeds):  # seeds outermost: rows interleave, so machine drift hits all alike
        for kind, name in [("recipe", r) for r in recipes] + [("anchor", a) for a in anchors]:
            done = keep / f"{run_name(name, seed)}.json" if keep else None
            if done and done.exists():
                runs.append(json.loads(done.read_text()))
                print(f"{name} seed {seed}: finished in an earlier sitting ({done})", flush=True)
            else:
                runs.append(run_recipe(name, args.data, seed, startup, args.curve_tta, keep, args.tracking_uri)
                            if kind == "recipe"
                            else run_anchor(name, args.data, seed, args.curve_tta))
                if done:
                    atomic_write_text(done, json.dumps(runs[-1]))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
            record = {"runs": runs, "summary": summary(runs, peak), "curve_tta": args.curve_tta, "cpu": cpu,
                      "peak": peak}
            stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    plot(runs, stem.with_suffix(".png"), args.curve_tta)
    print_rows(runs, peak, args.control)
    print(f"runs and curves: {stem}.json, {stem}.png")


def replot(files: list[Path], out: Path, control: str | None = None) -> None:
    """The runs of several earlier JSON files in one plot; their curve points' TTA must agree to share its title."""
    records = [json.loads(f.read_text()) for f in files]
    runs = [r for record in records for r in record["runs"]]
    if error := unknown_control(control, [r["row"] for r in runs]):
        raise SystemExit(error)
    curve_tta = {record.get("curve_tta") for record in records}
    out.mkdir(parents=True, exist_ok=True)
    rows = re.sub(r"[^\w.-]+", "_", "-".join(dict.fromkeys(r["row"] for r in runs)))[:120]
    path = out / f"speed-{date.today()}-curves-{rows}.png"
    walls = [r["wall_s"] for r in runs]
    plot(runs, path, curve_tta.pop() if len(curve_tta) == 1 else None, logx=max(walls) > 5 * min(walls))
    print_rows(runs, None, control)
    print(f"curves: {path}")


def print_rows(runs: list[dict], peak: dict | None, control: str | None = None) -> None:
    print(f"\n{'row':>18} {'seeds':>5} {'held-out acc':>16} {'wall s':>8} {'PFLOP':>7} {'train GFLOP/s':>13}"
          + (f" {'of ceiling':>10}" if peak else ""))
    for r in summary(runs, peak):
        print(f"{r['row']:>18} {r['seeds']:>5} {100 * r['accuracy_mean']:9.2f} ± {100 * r['accuracy_std']:.2f} "
              f"{r['wall_s_mean']:8.1f} {r['pflop']:7.3f} {r['train_gflops_per_s']:13.1f}"
              + (f" {100 * r['share_of_ceiling']:9.1f}%" if peak else ""))
    if control:
        print(f"\nagainst {control} (a row pays when its mean beats the control's by more than the larger seed range):")
        for v in against_control(runs, control):
            verdict = "needs 2 seeds" if v["pays"] is None else ("pays" if v["pays"] else "does not pay")
            bar = "-" if v["bar"] is None else f"{100 * v['bar']:.2f}"
            print(f"{v['row']:>18} {100 * v['diff']:+7.2f} points (bar {bar})  {verdict}; wall {v['wall_ratio']:.3f}x")


if __name__ == "__main__":
    main()
