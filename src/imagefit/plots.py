"""PNG plots saved beside the run: training curves, the confusion matrix, the learning-rate range test, the
reliability diagram and image thumbnails."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: Path, title: str | None = None, best_epoch: int | None = None) -> Path:
    """Loss, accuracy (train beside validation) and the learning rate per epoch; the best epoch (dashed) and any
    resume (dotted) marked; whole-number epoch ticks."""
    from matplotlib.ticker import MaxNLocator
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, ax in zip(("loss", "accuracy"), axes):
        for split in ("train", "val"):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", ms=3, label=split)
        ax.set_ylabel(key)
    axes[2].plot(epochs, [h.get("lr") for h in history], marker="o", ms=3, color="C2", label="rate at epoch end")
    axes[2].set_ylabel("learning rate (first group)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best_epoch:
            ax.axvline(best_epoch, color="0.3", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        for h in history:
            if h.get("resumed"):
                ax.axvline(h["epoch"] - 0.5, color="C3", ls=":", lw=1.2, label="resumed")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, title: str = "test split") -> Path:
    """Counts (true class on rows, predicted on columns) beside the same matrix normalized by row (each true
    class's share), each with its colour bar."""
    import numpy as np
    m = np.asarray(matrix)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1.5, size))
    for ax, values, name, fmt in ((axes[0], m, "counts", "d"), (axes[1], share, "share of each true class", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=None if fmt == "d" else 1)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=10)
        if len(classes) <= 20:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > 0.5 * max(values.max(), 1e-12) else "black")
    fig.suptitle(f"confusion matrix, {title} ({int(m.sum()):,} images)")
    return _save(fig, path)


def compared_curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Several runs' curves overlaid, one colour per run: training loss, then validation accuracy where the runs
    had a validation split (else training accuracy), per epoch."""
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    val = any(h.get("val_accuracy") is not None for rows in histories.values() for h in rows)
    for (name, rows), color in zip(histories.items(), [f"C{i}" for i in range(10)] * 10):
        epochs = [h["epoch"] for h in rows]
        axes[0].plot(epochs, [h.get("train_loss") for h in rows], marker="o", ms=3, color=color, label=name)
        key = "val_accuracy" if val else "train_accuracy"
        axes[1].plot(epochs, [h.get(key) for h in rows], marker="o", ms=3, color=color, label=name)
    axes[0].set_ylabel("training loss")
    axes[1].set_ylabel("validation accuracy" if val else "training accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def lr_finder(result, path: Path) -> Path:
    """Loss against rate (log axis), raw and smoothed, every candidate marked; the suggestion stands out."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed")
    marks = [("steepest", result.steepest, "C3", "o"), ("valley", result.valley, "C2", "s"),
             ("minimum", result.minimum, "C4", "v"), ("minimum/10", result.minimum_10, "C1", "^")]
    for name, lr, color, marker in marks:
        if lr != lr:  # a result saved before the minimum was recorded
            continue
        i = min(range(len(result.lrs)), key=lambda k: abs(result.lrs[k] - lr))
        chosen = name == result.rule
        ax.plot([lr], [result.smoothed[i]], marker, color=color, ms=11 if chosen else 6,
                markeredgecolor="black" if chosen else color,
                label=f"{name}: {lr:.2e}" + (" (suggested peak)" if chosen else ""))
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if v == v]
    if finite:  # the divergence at the end would squash the interesting part
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), 1.5 * finite[0] if finite[0] > 0 else None)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if result.warning:
        import textwrap
        ax.set_title(textwrap.fill(f"warning: {result.warning}", 90), fontsize=7, color="C3")
    return _save(fig, path)


def reliability(cal: dict, path: Path) -> Path:
    """Accuracy against confidence per bin (bars, each labelled with its number of images), the diagonal a
    calibrated model would follow."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for b in cal["bins"]:
        ax.bar((b["low"] + b["high"]) / 2, b["accuracy"], width=b["high"] - b["low"], color="C0", alpha=0.7,
               edgecolor="white")
        # how many predictions each bar stands on: a bar of 3 images says little
        ax.text((b["low"] + b["high"]) / 2, min(b["accuracy"], 0.93) + 0.015, f"{b['n']:,}", ha="center",
                va="bottom", fontsize=6, rotation=90)
    ax.plot([0, 1], [0, 1], "--", color="0.4", label="calibrated")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"expected calibration error {100 * cal['ece']:.2f}%")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    return _save(fig, path)


def thumbnail(image, path: Path, scale: int = 3) -> Path:
    """One uint8 C×H×W image as a PNG, enlarged `scale` times with nearest-neighbour (pixels stay visible)."""
    from PIL import Image
    array = image.permute(1, 2, 0).cpu().numpy()
    im = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def fid_per_step(rows: list[dict], path: Path) -> Path:
    """A generator's FID at each checkpoint it kept (the figure should fall as training goes on)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["step"] for r in rows], [r["fid"] for r in rows], marker="o")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"FID ({rows[0]['features'].split()[0]} features)" if rows else "FID")
    ax.grid(alpha=0.3)
    return _save(fig, path)
