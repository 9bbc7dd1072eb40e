"""Learning-rate range test (Smith, "Cyclical learning rates", 2015; fastai's `lr_find`).

Train for up to `steps` mini-batches with the rate growing exponentially from `start_lr` to `end_lr`, record the
loss, smooth it, stop when it diverges, then put everything back: weights, BatchNorm statistics, optimizer state
and the random generators, so the training that follows is bitwise the one that would have run without the test
(the data order needs no restoring: a batch is a pure function of its seed, epoch and step, see data/loader.py).

What users of other finders trip over, and what this one does instead:
- early spikes and the final blow-up fool the slope: the first `skip_start` and last `skip_end` points are left out,
  and the steepest descent is sought only on the final fall to the minimum, not on the flat, noisy stretch before;
- noise: the loss is smoothed (exponential average with bias correction) before any rule reads it;
- a NaN or infinite loss ends the test like a divergence and is never part of a suggestion;
- a different answer each run: the test uses the run's seeded weights and batches, so a seed gives one answer;
- a curve that never falls: an error that says so and proposes a range, never a meaningless rate;
- a curve that falls less than its own batch-to-batch noise (tiny data, small batches), is still falling at the
  top of the range, or comes from a test that went over a small training set more than once (its fall is then
  partly memorization): the rate is given with a warning (`FinderResult.warning`, printed and drawn on the plot).

Four candidates are reported (steepest descent, valley, minimum, minimum/10); the suggestion, a peak rate for
one-cycle, is chosen by `RULE` (see there): the minimum when the test diverged after it, else the steepest descent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from ..errors import ImagefitError


# The rule for a one-cycle peak, chosen on fastnet-small (10 seeds) and ResNet18 (3 seeds) with their 6-rate grids
# (benchmarks/RESULTS.md, "The finder's rule") and committed before it was checked on ResNet-20 and fastnet-res:
# - if, after its minimum, the smoothed loss climbs back above where it started (the test undid its whole fall:
#   it diverged), suggest the rate at the minimum: one-cycle's warm-up lets its peak sit at the edge of stability
#   that a constant-rate test finds (ResNet18: minimum 0.038-0.045, best grid peak 0.063, steepest 0.015);
# - else suggest the steepest descent: a curve that only drifts up after its minimum has no edge to find (nets
#   with scale-invariant filters absorb large rates by growing their norms), and its minimum, lagged by the
#   smoothing, lies past the good rates (fastnet-small: minimum 2.7-3.9 cost 2.4 points; steepest 0.89-2.3 within
#   0.04 of the grid's best).
# On the chosen curves the share of the fall undone after the minimum was 0.00-0.28 for fastnet-small, 9-18 for
# ResNet18; the threshold 1 lies between.
RULE = "minimum if the loss climbs back above its start after it (diverged), else steepest descent"


@dataclass
class FinderResult:
    lrs: list[float]
    losses: list[float]  # raw, NaN where the loss was not finite
    smoothed: list[float]
    steepest: float
    valley: float
    minimum_10: float
    stopped: str  # "diverged", "non-finite loss" or "end of range"
    minimum: float = math.nan  # the rate at the smoothed loss's minimum (inner points)
    undone: float = 0.0  # how much of the fall the smoothed loss climbed back after its minimum (1: all of it)
    fall: float = math.nan  # how far the smoothed loss fell, start of the inner points to its minimum
    noise: float = math.nan  # the raw loss's batch-to-batch spread
    falling_at_end: bool = False  # the minimum is the last inner point: the curve had not turned up yet
    passes: float = 0.0  # how many times the test went over the training set (0: not known)
    batch_size: int = 0

    @property
    def rule(self) -> str:
        """Which candidate `suggestion` is (see RULE)."""
        return "minimum" if self.undone >= 1 and math.isfinite(self.minimum) else "steepest"

    @property
    def suggestion(self) -> float:
        return self.minimum if self.rule == "minimum" else self.steepest

    @property
    def warning(self) -> str | None:
        """Why the suggestion may not mean much, or None. A curve whose fall is within its noise (tiny data, small
        batches, a model that barely moves in 100 steps) has a "steepest descent" anywhere; a curve still falling
        at the top of the range has its steepest point cut off by the range; a test that went over the training set
        more than once reads, after the first pass, how fast the model memorizes what it has seen."""
        said = []
        if self.fall < self.noise:
            said.append(f"the smoothed loss fell only {self.fall:.3f}, less than the batch-to-batch noise "
                        f"({self.noise:.3f}): the suggestion is a guess; rerun with a larger --batch-size or more "
                        f"--steps, or pick a rate by a short grid")
        if self.passes > 1:
            per_pass = round(len(self.lrs) / self.passes)
            fix = (f"rerun with --steps {per_pass} or fewer" if per_pass >= 20 else
                   "the training set is too small for a range test at this --batch-size; use a smaller one or "
                   "pick a rate by a short grid")
            said.append(f"the test went over the training set {self.passes:.1f} times ({len(self.lrs)} steps of "
                        f"{self.batch_size} images): past step {per_pass} it sees images again, and its fall there "
                        f"is partly memorization; {fix}")
        if self.falling_at_end and self.stopped == "end of range":
            said.append(f"the loss was still falling at the top of the range ({self.lrs[-1]:.1e}); rerun with a "
                        f"higher --end-lr")
        return "; and ".join(said) or None

    def to_dict(self) -> dict:
        return {**asdict(self), "suggestion": self.suggestion, "rule": self.rule, "warning": self.warning}


def describe_candidates(r: FinderResult) -> str:
    """The candidates in one line, e.g. for a log: 'steepest 1.5e-02, valley 4.0e-03, minimum 3.8e-02, ...'."""
    return (f"steepest {r.steepest:.2e}, valley {r.valley:.2e}, minimum {r.minimum:.2e}, minimum/10 "
            f"{r.minimum_10:.2e}; the loss climbed back {r.undone:.2f} of its fall after the minimum")


def exponential_rates(start_lr: float, end_lr: float, steps: int) -> list[float]:
    return [start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction; a non-finite loss leaves the average as it was."""
    out, avg, n = [], 0.0, 0
    for loss in losses:
        if math.isfinite(loss):
            n += 1
            avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** n) if n else math.nan)
    return out


def suggest(lrs: list[float], smoothed: list[float], skip_start: int = 10, skip_end: int = 5,
            losses: list[float] | None = None) -> dict:
    """The three rules on the smoothed curve, inner points only, with how far it fell and (given the raw
    `losses`) their noise. Raises when the loss never falls."""
    lr = np.asarray(lrs[skip_start: len(lrs) - skip_end], dtype=float)
    loss = np.asarray(smoothed[skip_start: len(smoothed) - skip_end], dtype=float)
    keep = np.isfinite(loss)
    lr, loss = lr[keep], loss[keep]
    if len(lr) < 3:
        raise ImagefitError(f"the range test recorded {len(lr)} usable points (it diverged almost at once); rerun "
                            f"with a lower range, e.g. --start-lr {lrs[0] / 100:.0e} --end-lr {lrs[-1] / 10:.0e}")
    slope = np.gradient(loss, np.log10(lr))  # loss change per decade of rate
    lowest = int(np.argmin(loss))
    # The descent that leads to the minimum: after it the loss only rises, and a fall there is a rebound from a
    # blow-up (BatchNorm re-adapting), never a rate to train at. And only its last stretch, from the last point
    # still in the top quarter of the fall: before it the curve is flat, and a flat curve's point-to-point wiggles
    # (the smoothed loss averages few batches early on) read as descents. ResNet-20 on 500 images and ResNet18 on
    # 2,000 had their steepest wiggle just past the skipped start, at ~1e-6, where nothing trains (ResNet-20 then
    # trained to chance accuracy); from the top quarter on, the rule finds their real descent.
    high = np.nonzero(loss[: lowest + 1] >= loss[lowest] + 0.75 * (loss[0] - loss[lowest]))[0]
    top = int(high[-1]) if len(high) else 0
    steepest = top + int(np.argmin(slope[top: lowest + 1]))
    if slope[steepest] >= 0 or loss.min() >= loss[0] * (1 - 1e-3):
        rose = loss[-1] > loss[0]
        hint = (f"every rate from {lr[0]:.1e} up was too high: try --start-lr {lrs[0] / 1000:.0e} "
                f"--end-lr {lr[0]:.0e}" if rose else
                f"the model did not learn at any rate: check the labels and the data, or try --end-lr "
                f"{min(lrs[-1] * 100, 1e3):.0e} with more --steps")
        raise ImagefitError(f"the loss never decreased between {lr[0]:.1e} and {lr[-1]:.1e}: no rate to suggest; "
                            + hint)
    # Valley: the stretch where the loss does most of its falling, from where it has fallen a tenth of its total
    # drop to its minimum; its middle on the log axis. (fastai's valley, the longest decreasing subsequence, runs
    # through any long flat and noisy start, and lands there.)
    falling = np.nonzero(loss[: lowest + 1] <= loss[0] - 0.1 * (loss[0] - loss[lowest]))[0]
    begin = int(falling[0]) if len(falling) else lowest
    valley = float(np.sqrt(lr[begin] * lr[lowest]))
    # Batch-to-batch noise of the raw losses over the same points: the spread of successive differences (robust
    # to the trend and to spikes: median absolute deviation, scaled to a standard deviation, over √2).
    raw = np.asarray(losses[skip_start: len(losses) - skip_end] if losses else [], dtype=float)
    if len(raw):
        raw = raw[keep][: lowest + 1]
    steps = np.diff(raw[np.isfinite(raw)])
    noise = float(1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2)) if len(steps) > 2 else 0.0
    # How much of the fall the loss climbed back after its minimum, read on all points after it, the skipped end
    # included (the blow-up is there): ≥ 1 means it rose above where it started, the test diverged.
    after = np.asarray(smoothed[skip_start + int(np.nonzero(keep)[0][lowest]):], dtype=float)
    fall = float(loss[0] - loss[lowest])
    undone = float((np.nanmax(after) - loss[lowest]) / fall)
    return {"steepest": float(lr[steepest]), "valley": valley, "minimum_10": float(lr[lowest] / 10),
            "minimum": float(lr[lowest]), "undone": undone, "fall": fall, "noise": noise,
            # Still falling only if nothing after the minimum rose: a blow-up in the skipped last points (fastnet-small
            # rose from 1.8 to 2.3-3.0 between rates 3 and 10) is not "still falling at the top of the range".
            "falling_at_end": lowest == len(loss) - 1 and undone < 0.05}


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               loss_fn: Callable, *, base_lr: float, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
               diverge: float = 4.0, autocast=None, train_images: int = 0,
               on_step: Callable[[int, int, float, float], None] | None = None) -> FinderResult:
    """Run the test with `optimizer` (its groups keep their ratios to `base_lr`), then restore the model, the
    optimizer and the CPU/CUDA generators exactly. `batches` yields (images, labels), ready for the model;
    `train_images`, the size of the set they come from (0: unknown), lets the result say how often it was seen.
    `on_step(step, steps, lr, loss)` after each step, for a progress display (a test can take minutes)."""
    if not 0 < start_lr < end_lr:
        raise ImagefitError(f"--start-lr must be above 0 and below --end-lr (got {start_lr:g}, {end_lr:g})")
    if steps < 20:
        raise ImagefitError(f"--steps {steps} is too few for a range test; use 20 or more (100 is typical)")
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    saved_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    ratios = [g["lr"] / base_lr for g in optimizer.param_groups]
    lrs, losses, best, stopped = exponential_rates(start_lr, end_lr, steps), [], math.inf, "end of range"
    beta, avg = 0.98, 0.0  # the running form of `smooth`, for the divergence check
    seen = batch_size = 0
    try:
        model.train()
        for lr, (x, y) in zip(lrs, batches):
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            seen, batch_size = seen + len(x), max(batch_size, len(x))
            with autocast() if autocast else torch.autocast("cpu", enabled=False):
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            losses.append(value if math.isfinite(value) else math.nan)
            if not math.isfinite(value):
                stopped = "non-finite loss"
                break
            loss.backward()
            optimizer.step()
            avg = beta * avg + (1 - beta) * value
            current = avg / (1 - beta ** len(losses))
            if on_step:
                on_step(len(losses), steps, lr, current)
            best = min(best, current)
            if len(losses) > 10 and current > diverge * best:
                stopped = "diverged"
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
        optimizer.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(saved_grad[n])
        torch.set_rng_state(saved_rng)
        if saved_cuda:
            torch.cuda.set_rng_state_all(saved_cuda)
        model.train(was_training)
    lrs = lrs[: len(losses)]
    smoothed = smooth(losses)
    rules = suggest(lrs, smoothed, losses=losses)
    return FinderResult(lrs=lrs, losses=losses, smoothed=smoothed, stopped=stopped, **rules,
                        passes=seen / train_images if train_images else 0.0, batch_size=batch_size)
