"""Does synthetic data help? Held-out accuracy of the `fast` recipe on real images only, beside the same recipe
with a share of every batch drawn from each generator's images (equal training compute: the epoch stays one
pass over the real images).

    python benchmarks/generative.py --data DIR --synthetic diffusion=SYN1 --synthetic gan=SYN2 \
        [--ratios 0.1,0.3,0.5] [--per-class 450] [--seeds 1] [--epochs N] [--jobs 2] [--resume RUNS.jsonl]

DIR holds cifar-10-batches-py from ../shared/datasets/make-cifar10 (the held-out 5,000 are its test split).
`--per-class 450` is the 10%-of-the-data run, where the literature expects synthetic images to help most; the
generators should then have been trained on that subset too, or the comparison lets them see more real data than
the classifier (the table says which they were trained on when their folder records it). Each generator's row
carries its cost and quality when its folders hold them: training time (diffusion.pt/gan.pt), sampling speed
(synthetic.json), FID/CAS (quality.json from `imagefit generate eval`). `--alternatives` adds what a practitioner
would do with the same classifier compute instead (real only, longer, with and without stronger augmentation).
`--write-subset DIR --per-class 450` writes the fair experiment's real set once, as its own cifar-10-batches-py
folder (seed 0's choice of 450 a class, the held-out 5,000 copied as its test split): the generators then train on
`--data DIR` and the classifier runs take `--data DIR` too, so every seed and every generator sees the same 4,500
real images and no others (`--per-class` here draws a new subset per seed).
`--jobs 2` runs two classifiers at once on a core each; `--resume FILE` keeps every finished run, so a table of
hours continues after an interruption and a larger table reuses the runs a smaller one already made.
Every row: mean ± standard error over seeds, the gain over real only and whether it exceeds twice its standard
error; a plot of accuracy against the synthetic share beside the JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def _run_key(args, extra: list[str], seed: int) -> str:
    """What makes two classifier runs the same run: the data, the subset, the epochs, the variant's flags (folders
    as absolute paths) and the seed. The thread count is not part of it (it changes the time, not the run)."""
    flags = [str(Path(a).resolve()) if Path(a).is_dir() else a for a in extra]
    return json.dumps([str(Path(args.data).resolve()), args.per_class, args.epochs, flags, seed])


def _train(args, tmp: str, extra: list[str], seed: int, threads: int) -> dict:
    out = f"{tmp}/{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "imagefit", "train", "--recipe", "fast-small", "--data", args.data,
            "--seed", str(seed), "--tracking-uri", "none", "--progress", "lines", "--out", out, "--json"]
    if args.per_class:
        argv += ["--per-class", str(args.per_class)]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    argv += extra  # last: an alternative's own --epochs must win over the table's --epochs (the last flag wins)
    if threads:
        argv += ["--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"accuracy": r["accuracy"], "wall_s": round(time.perf_counter() - start, 1), "threads": threads}


def _run_all(args, tmp: str, jobs: list[tuple[list[str], int]]) -> dict[str, dict]:
    """Every (variant flags, seed) run, `--jobs` at a time, each on its share of the cores. Runs already in the
    `--resume` file are read back, not rerun, and each finished run is appended to it at once, so an interrupted
    table continues where it stopped (a benchmark of hours must survive the end of a sitting)."""
    done: dict[str, dict] = {}
    log = Path(args.resume) if args.resume else None
    if log and log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["key"]] = entry["run"]
    todo = [(extra, seed) for extra, seed in jobs if _run_key(args, extra, seed) not in done]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs read back from {log}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        running = {pool.submit(_train, args, tmp, extra, seed, threads): _run_key(args, extra, seed)
                   for extra, seed in todo}
        for finished in concurrent.futures.as_completed(running):  # kept as each ends, not in submission order
            done[running[finished]] = run = finished.result()
            if log:
                with log.open("a") as f:
                    f.write(json.dumps({"key": running[finished], "run": run}) + "\n")
    return done


def _generator_facts(folder: Path) -> dict:
    """What the synthetic folder and its generator recorded about themselves."""
    facts = {}
    meta_path = folder / "synthetic.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        facts.update({k: meta.get(k) for k in ("family", "steps", "guidance", "per_class", "images_per_s", "threads",
                                               "strength", "snapshot")})
        gen = Path(meta["generator"])
        for ckpt in (gen / "diffusion.pt", gen / "gan.pt"):
            if ckpt.exists():
                import torch
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                snapshot = meta.get("snapshot")  # an earlier step's weights: the run's seconds are not theirs
                facts.update(train_steps=snapshot or state["step"],
                             train_seconds=None if snapshot else round(state.get("seconds", float("nan")), 1),
                             preset=state["config"]["preset"])
        # `generate eval --synthetic` writes its scores into the images' folder, `--model` into the generator's
        quality = next((q for q in (folder / "quality.json", gen / "quality.json") if q.exists()), None)
        if quality is not None:
            q = json.loads(quality.read_text())
            facts.update({k: q[k] for k in ("fid", "kid", "inception_score", "label_accuracy", "cas", "features")
                          if k in q})
    return facts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--synthetic", action="append", default=[], metavar="NAME=FOLDER",
                   help="a generator's images (imagefit generate sample/vary); repeat per generator")
    p.add_argument("--ratios", default="0.1,0.3,0.5")
    p.add_argument("--per-class", type=int, default=0, help="real images per class (450: the 10%% run; 0: all)")
    p.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: keep)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--alternatives", action="store_true",
                   help="also what a practitioner would do with the same classifier compute instead, at each ratio's "
                        "compute (a mixed epoch is one pass over the real images in batches of (1 - ratio) real, so "
                        "it takes 1 / (1 - ratio) the steps): real only trained that much longer, and the same "
                        "with stronger classical augmentation (TrivialAugment; rotation 15 + cutout 8)")
    p.add_argument("--write-subset", metavar="DIR", help="write seed 0's --per-class subset of --data as a CIFAR-10 "
                   "folder (train: the subset; test: --data's) and stop")
    p.add_argument("--jobs", type=int, default=1, help="classifier runs at once, each on cores / jobs threads "
                   "(1: one at a time on torch's default threads); wall times then come from the shared machine")
    p.add_argument("--resume", metavar="FILE", help="JSON lines of finished runs: runs already there are read back, "
                   "each new one is appended (an interrupted table continues; tables sharing rows share runs)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: give 1 or more")
    if args.write_subset:
        if not args.per_class:
            p.error("--write-subset needs --per-class")
        write_subset(args.data, Path(args.write_subset), args.per_class)
        return
    ratios = [float(r) for r in args.ratios.split(",")]
    generators = dict(s.split("=", 1) for s in args.synthetic)
    base_epochs = args.epochs or _recipe_epochs("fast-small")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("real only", 0.0, [])] + [(name, r, ["--synthetic", folder, "--synthetic-ratio", str(r)])
                                                for name, folder in generators.items() for r in ratios]
        if args.alternatives:
            for r in ratios:
                longer = ["--epochs", str(max(1, round(base_epochs / (1 - r))))]
                variants += [("real, longer", r, longer),
                             ("real, longer + trivial", r, [*longer, "--augment-policy", "trivial"]),
                             ("real, longer + rot/cutout", r, [*longer, "--rotation", "15", "--cutout", "8"])]
        finished = _run_all(args, tmp, [(extra, seed) for _, _, extra in variants for seed in range(args.seeds)])
        for name, ratio, extra in variants:
            runs = [finished[_run_key(args, extra, seed)] for seed in range(args.seeds)]
            acc = [r["accuracy"] for r in runs]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            row = {"generator": name, "ratio": ratio, "accuracy": statistics.mean(acc), "std": std,
                   "se": std / len(acc) ** 0.5, "runs": acc, "wall_s": statistics.mean(r["wall_s"] for r in runs),
                   "extra": [a for a in extra if not a.startswith("/")]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    real = rows[0]
    subset = f"{args.per_class} real images per class" if args.per_class else "all real training images"
    print(f"\nfast-small recipe, {subset}, {args.seeds} seed(s); held-out test split; gain against real only, and "
          f"whether it exceeds twice its standard error (the issue's bar for 'above noise')")
    for r in rows:
        gain = r["accuracy"] - real["accuracy"]
        se = (r["se"] ** 2 + real["se"] ** 2) ** 0.5
        r["gain"], r["gain_se"] = gain, se
        r["above_noise"] = bool(r is not real and args.seeds > 1 and gain > 2 * se)
        print(f"{r['generator']:>26} ratio {r['ratio']:.1f}: {100 * r['accuracy']:.2f}% ± {100 * r['se']:.2f} "
              f"(SE)  {100 * gain:+.2f} ± {100 * se:.2f}{'  above noise' if r['above_noise'] else ''}  "
              f"{r['wall_s']:.0f} s")
    facts = {name: _generator_facts(Path(folder)) for name, folder in generators.items()}
    for name, f in facts.items():
        print(f"{name}: {json.dumps(f)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"generative-{date.today()}-pc{args.per_class}.json"
    n = 1
    while path.exists():  # an earlier run's table is never overwritten
        n += 1
        path = out / f"generative-{date.today()}-pc{args.per_class}-{n}.json"
    path.write_text(json.dumps({"args": vars(args), "rows": rows, "generators": facts}, indent=1))
    _plot(rows, path.with_suffix(".png"))
    print(f"runs: {path} and {path.with_suffix('.png')}")


def write_subset(data: str, dst: Path, per_class: int, seed: int = 0) -> None:
    """DST/cifar-10-batches-py: `per_class` training images a class, chosen as `imagefit train --per-class N
    --seed SEED` chooses them, in five data batches; test_batch and batches.meta copied from DATA's."""
    import pickle
    import shutil

    import numpy as np
    from imagefit.config import DataConfig
    from imagefit.data.sources import find_layout, load_splits
    kind, where = find_layout(Path(data))
    if kind != "cifar":
        raise SystemExit(f"--write-subset reads a cifar-10-batches-py folder; {data} is {kind}")
    root = dst / "cifar-10-batches-py"
    if root.exists():
        raise SystemExit(f"{root} exists already; choose a new folder (nothing is overwritten)")
    train = load_splits(DataConfig(data=data, val_fraction=0.0, per_class=per_class), seed).train
    root.mkdir(parents=True)
    pixels, labels = train.images.reshape(len(train.images), -1).numpy(), train.labels.numpy()
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), 1):
        with open(root / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": pixels[part], b"labels": labels[part].tolist()}, f)
    for name in ("test_batch", "batches.meta"):
        shutil.copyfile(where / name, root / name)
    counts = dict(zip(train.classes, np.bincount(labels, minlength=len(train.classes)).tolist()))
    print(f"{len(labels)} training images ({counts}) and {where}'s test split in {root}")


def _recipe_epochs(name: str) -> int:
    from imagefit.config import Config, load_recipe
    return Config.from_dict(load_recipe(name)).train.epochs


def _plot(rows: list[dict], path: Path) -> None:
    """Held-out accuracy against the synthetic share, one line per generator (error bars: SE over seeds); the
    equal-compute alternatives as markers at the share whose compute they match; real only as a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    real = rows[0]
    ax.axhline(100 * real["accuracy"], color="0.4", ls="--", label=f"real only ({100 * real['accuracy']:.2f}%)")
    for name in dict.fromkeys(r["generator"] for r in rows[1:]):
        rs = [r for r in rows if r["generator"] == name]
        line = not name.startswith("real")
        ax.errorbar([r["ratio"] for r in rs], [100 * r["accuracy"] for r in rs], [100 * r["se"] for r in rs],
                    marker="o" if line else "s", ls="-" if line else "none", capsize=3, label=name)
    ax.set_xlabel("synthetic share of each batch (alternatives: at that share's compute)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
