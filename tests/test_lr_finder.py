"""The learning-rate range test: the rules on known curves, exact restoration, and `--lr auto` end to end."""

import json
import math
import random

import pytest
import torch
import torch.nn as nn

from imagefit.errors import ImagefitError
from imagefit.training.lr_finder import exponential_rates, range_test, smooth, suggest

from .conftest import TINY
from .test_train import fails, run, same_weights


def curve(lrs, centre=1e-2, spike_at=None, blow_up=True):
    """A loss falling fastest (per decade) at `centre`, optionally with an early spike and a final blow-up."""
    out = []
    for i, lr in enumerate(lrs):
        loss = 2.3 - 2.0 / (1 + math.exp(-2.5 * (math.log10(lr) - math.log10(centre))))
        if blow_up and lr > 30 * centre:
            loss += 50 * (math.log10(lr) - math.log10(30 * centre)) ** 2
        if i == spike_at:
            loss -= 1.5  # an early outlier that a raw-slope rule would take for progress
        out.append(loss)
    return out


def test_steepest_descent_is_found_and_the_spike_ignored():
    lrs = exponential_rates(1e-6, 10, 100)
    rules = suggest(lrs, smooth(curve(lrs, spike_at=3), beta=0.5))
    assert 10 ** -2.3 < rules["steepest"] < 10 ** -1.6  # near the true centre 1e-2, not at the spike
    inner = smooth(curve(lrs, spike_at=3), beta=0.5)[10:95]
    assert rules["minimum_10"] == pytest.approx(lrs[10 + inner.index(min(inner))] / 10)
    assert 10 ** -2.6 < rules["valley"] < 10 ** -1.4  # the middle of the fall, between 10% of it and the minimum


def test_a_flat_noisy_start_is_not_a_descent():
    """Small batches on a few hundred images: the loss is flat for decades, with batch-to-batch noise of a third of
    its eventual fall, and the smoothed curve wiggles early on (it averages few batches). A point-to-point slope
    over the whole curve lands on an early wiggle in most of these curves (ResNet-20 on 500 CIFAR images did,
    at 1.4e-6, and trained to chance accuracy); the rule finds the real descent (fastest at 0.1, lagged by the
    smoothing; the loss blows up past 3) in at least 9 of 10."""
    lrs = exponential_rates(1e-7, 10, 100)

    def noisy(seed):
        rng = random.Random(seed)
        return [2.3 - 0.4 / (1 + math.exp(-2.0 * (math.log10(lr) + 1))) + 2 * max(0.0, math.log10(lr / 3))
                + rng.gauss(0, 0.15) for lr in lrs]
    found = [suggest(lrs, smooth(losses), losses=losses)["steepest"] for losses in map(noisy, range(10))]
    assert sum(1e-2 < lr < 3 for lr in found) >= 9, found


def test_a_rebound_after_a_blow_up_is_not_a_descent():
    lrs = exponential_rates(1e-6, 10, 100)
    losses = curve(lrs, blow_up=False)
    for i, lr in enumerate(lrs):  # past 0.1 the loss jumps up, then falls back steeply as BatchNorm re-adapts
        if lr > 0.1:
            losses[i] += 3.0 - 2.0 * min(1.0, math.log10(lr / 0.1))  # back down, not below the minimum
    rules = suggest(lrs, smooth(losses, beta=0.5))
    assert 10 ** -2.3 < rules["steepest"] < 10 ** -1.6


def finder_result(lrs, losses, beta=0.98):
    from imagefit.training.lr_finder import FinderResult
    smoothed = smooth(losses, beta)
    return FinderResult(lrs=lrs, losses=losses, smoothed=smoothed, stopped="end of range",
                        **suggest(lrs, smoothed, losses=losses))


def test_the_suggestion_is_the_minimum_after_a_divergence_else_the_steepest_descent():
    """The rule of lr_finder.RULE on the two shapes it was chosen on: a loss that blows up after its minimum
    (ResNet18) is trained at the minimum's rate; one that only drifts up after it (fastnet) at its steepest
    descent."""
    lrs = exponential_rates(1e-6, 10, 100)
    diverged = finder_result(lrs, curve(lrs, blow_up=True), beta=0.5)
    assert diverged.undone >= 1 and diverged.rule == "minimum" and diverged.suggestion == diverged.minimum
    assert diverged.minimum > 2 * diverged.steepest
    drifting = curve(lrs, blow_up=False)
    for i, lr in enumerate(lrs):  # a mild rise after the minimum: a tenth of the fall
        drifting[i] += 0.2 * min(1.0, max(0.0, math.log10(lr / 0.3)))
    drifted = finder_result(lrs, drifting, beta=0.5)
    assert drifted.undone < 1 and drifted.rule == "steepest" and drifted.suggestion == drifted.steepest
    assert drifted.to_dict()["rule"] == "steepest" and drifted.to_dict()["minimum"] == drifted.minimum


def test_a_blow_up_in_the_last_points_is_not_still_falling():
    """The last points are left out of the rules, but a rise there is a rise: the warning must not tell a curve
    that blew up at the top of the range that it was still falling (it did, before the fix)."""
    lrs = exponential_rates(1e-6, 10, 100)
    losses = curve(lrs, centre=0.3, blow_up=False)
    for i in range(96, 100):  # the minimum at the last inner point, then a blow-up in the skipped end
        losses[i] = losses[94] + 2.0 * (i - 95)
    blew_up = finder_result(lrs, losses, beta=0.5)
    assert "still falling" not in (blew_up.warning or "")
    still = finder_result(lrs, curve(lrs, centre=3.0, blow_up=False), beta=0.5)
    assert "still falling" in still.warning


def test_non_finite_losses_never_shape_the_answer():
    lrs = exponential_rates(1e-6, 10, 100)
    losses = curve(lrs)
    losses[40] = math.nan
    smoothed = smooth(losses, beta=0.5)
    assert all(math.isfinite(v) for v in smoothed) and smoothed[40] == smoothed[39]
    assert 10 ** -2.3 < suggest(lrs, smoothed)["steepest"] < 10 ** -1.6


@pytest.mark.parametrize("losses, hint", [([5.0 + 0.01 * i for i in range(60)], "too high"),
                                         ([2.3] * 60, "did not learn")])
def test_a_curve_that_never_falls_is_an_error_with_a_range(losses, hint):
    with pytest.raises(ImagefitError, match=f"never decreased.*{hint}"):
        suggest(exponential_rates(1e-5, 1, 60), smooth(losses))


def test_range_test_restores_model_optimizer_and_generator_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # momentum buffers exist: they must come back too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = json.dumps(opt.state_dict()["param_groups"])
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    result = range_test(model, opt, iter([(x, y)] * 100), nn.functional.cross_entropy, base_lr=0.1, steps=60)
    assert len(result.lrs) >= 20
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())
    assert json.dumps(opt.state_dict()["param_groups"]) == opt_before
    assert all(opt.state[p]["momentum_buffer"].equal(m) for p, m in zip(model.parameters(), momentum))
    assert torch.get_rng_state().equal(rng)


def test_lr_auto_trains_exactly_as_the_found_rate_given_by_hand(capsys, cifar_dir):
    args = ["--data", str(cifar_dir), *TINY[:-2], "--epochs", "1", "--dropout", "0.2"]  # TINY ends --tracking-uri none
    found = run(capsys, "find-lr", *args, "--steps", "40", "--out", "runs/finder")
    again = run(capsys, "find-lr", *args, "--steps", "40", "--out", "runs/finder2")
    assert found == {**again, "plot": found["plot"], "out": found["out"]}  # one seed, one answer
    assert (tmp := json.load(open("runs/finder/lr_finder.json")))["suggestion"] == found["suggestion"]
    assert len(tmp["lrs"]) == found["steps"] and found["plot"].endswith("lr_finder.png")
    # The default --steps 100 exceeds an epoch of this tiny set (6 batches): the test walks on into later epochs.
    auto = run(capsys, "train", *args, "--lr", "auto", "--out", "runs/auto", "--tracking-uri", "none")
    by_hand = json.load(open("runs/auto/lr_finder.json"))["suggestion"]
    run(capsys, "train", *args, "--lr", repr(by_hand), "--out", "runs/hand", "--tracking-uri", "none")
    assert same_weights("runs/auto/bundle.safetensors", "runs/hand/bundle.safetensors")
    assert auto["accuracy"] == json.load(open("runs/hand/metrics.json"))["accuracy"]
    assert (tmp_cfg := open("runs/auto/config.yaml").read()) and "lr: auto" not in tmp_cfg


def test_finder_errors_are_one_line(capsys, cifar_dir):
    args = ["--data", str(cifar_dir), *TINY[:-2]]
    assert "drop --lr auto" in fails(capsys, "find-lr", *args, "--lr", "auto")
    assert "--start-lr must be" in fails(capsys, "find-lr", *args, "--start-lr", "1", "--end-lr", "0.1")
    assert "muon has two" in fails(capsys, "train", *args, "--optimizer", "muon", "--lr", "auto")
    assert "a number or auto" in fails(capsys, "train", *args, "--lr", "fast")


def test_a_fall_within_the_noise_or_cut_off_by_the_range_is_flagged():
    import random
    from imagefit.training.lr_finder import FinderResult
    lrs = exponential_rates(1e-7, 10, 100)
    rng = random.Random(0)

    def result(losses):
        smoothed = smooth(losses)
        return FinderResult(lrs=lrs, losses=losses, smoothed=smoothed, stopped="end of range",
                            **suggest(lrs, smoothed, losses=losses))

    clean = [v + rng.gauss(0, 0.02) for v in curve(lrs, blow_up=True)]
    assert result(clean).warning is None  # a fall of ~2 against noise of 0.02
    flat = [2.4 - 0.05 * (i / 100) + rng.gauss(0, 0.1) for i in range(100)]  # falls 0.05 in noise of 0.1
    assert "batch-to-batch noise" in result(flat).warning
    rising_late = [v + rng.gauss(0, 0.02) for v in curve(lrs, centre=3.0, blow_up=False)]  # still falling at 10
    assert "higher --end-lr" in result(rising_late).warning


def test_a_range_test_that_went_over_the_data_more_than_once_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))

    def test(train_images):  # batches of 8 until the range ends (end_lr 1: no divergence to stop it early)
        r = range_test(model, opt, iter([(x, y)] * 100), nn.functional.cross_entropy, base_lr=0.1, end_lr=1.0,
                       train_images=train_images)
        assert len(r.lrs) == 100 and r.batch_size == 8 and r.passes == 800 / train_images
        return r.warning or ""
    assert "went over the training set 12.5 times (100 steps of 8 images)" in test(64)
    assert "too small for a range test at this --batch-size" in test(64)
    assert "went over the training set 2.0 times" in test(400) and "--steps 50 or fewer" in test(400)
    assert "went over" not in test(800)
