"""Progress lines: the whole run's time left, and the final evaluation's own progress."""

import io
import math

from imagefit.training import progress as P


def test_lines_say_the_whole_runs_time_left_and_the_final_test(monkeypatch):
    clock = iter(range(0, 1000))
    monkeypatch.setattr(P.time, "perf_counter", lambda: float(next(clock)))
    out = io.StringIO()
    p = P.Progress("lines", out)
    p.start_epoch(1, 3, 4, start=2)  # a resumed run: 6 of 12 steps done before this process
    for _ in range(2):
        p.step(8, math.nan, math.nan)
    p.end_epoch({"train_loss": 1.0, "lr": 0.1})
    line = out.getvalue().splitlines()[-1]
    # the clock ticks 1 s per reading: 2 steps in 2 s by the estimate, 12 - 8 = 4 steps left
    assert line.startswith("epoch 2/3") and line.endswith("run 0m04s left")
    with p.evaluation("final test (TTA flip)", 3) as on_batch:
        on_batch()
    assert out.getvalue().splitlines()[-2:] == ["final test (TTA flip): 3 batches",
                                                "final test (TTA flip): done in 1.0s"]
    p.start_epoch(2, 3, 4)
    for _ in range(4):
        p.step(8, math.nan, math.nan)
    p.end_epoch({"train_loss": 1.0, "lr": 0.1})
    assert "left" not in out.getvalue().splitlines()[-1]  # the last epoch: nothing left to estimate


def test_time_left_weighs_the_small_epochs_then_uses_each_sizes_measured_pace(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    # epoch 1 of 3 at half size (a quarter of the expected cost), then two full-size epochs of 4 steps each
    p = P.Progress("lines", out, costs=[0.25, 1.0, 1.0])

    def epoch(e, seconds_a_step):
        p.start_epoch(e, 3, 4)
        for _ in range(4):
            now[0] += seconds_a_step
            p.step(8, math.nan, math.nan)
        p.end_epoch({"train_loss": 1.0, "lr": 0.1})
        return out.getvalue().splitlines()[-1]

    # 1 s a quarter-cost step: 4 s a full step expected, and 8 full steps left; counting steps alone would say 8 s
    assert epoch(0, 1.0).endswith("run 0m32s left")
    # the full steps measured at 2 s (small steps cost more than their area, as on a CPU): 4 left take 8 s, where
    # the pace of all steps by cost (12 s for 5 units) would say 9.6 s
    assert epoch(1, 2.0).endswith("run 0m08s left")


def _run(monkeypatch, costs, paces):
    """A run of len(costs) epochs of 4 steps; the epochs in `paces` take those seconds a step. The last line."""
    now = [0.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    p = P.Progress("lines", out, costs=costs)
    for e, seconds_a_step in enumerate(paces):
        p.start_epoch(e, len(costs), 4)
        for _ in range(4):
            now[0] += seconds_a_step
            p.step(8, math.nan, math.nan)
        p.end_epoch({"train_loss": 1.0, "lr": 0.1})
    return out.getvalue().splitlines()[-1]


def test_a_size_not_yet_run_is_expected_on_the_line_through_the_two_largest_run(monkeypatch):
    # quarter-cost steps at 1 s, half-cost at 1.5 s: 0.5 s fixed + 2 s a unit of cost, so the 4 full steps left take
    # 10 s; by area from the half-cost steps alone they would take 12 s, by all steps so far 13.3 s
    assert _run(monkeypatch, [0.25, 0.5, 1.0], [1.0, 1.5]).endswith("run 0m10s left")


def test_steps_that_cost_the_same_at_every_size_are_expected_to_go_on_so(monkeypatch):
    # a GPU at a small batch: launches, not arithmetic, so 16- and 24-px steps take the same 1 s, and so will the
    # 32-px ones (by area: 4 / 0.5625 = 7.1 s for the 4 left)
    assert _run(monkeypatch, [0.25, 0.5625, 1.0], [1.0, 1.0]).endswith("run 0m04s left")


def test_steps_costlier_than_their_share_fall_back_to_proportion(monkeypatch):
    # 1 s at a quarter, 4 s at a half: the line through them would start below zero, so proportion to cost from
    # the largest run: 8 s a full step, 32 s for the 4 left
    assert _run(monkeypatch, [0.25, 0.5, 1.0], [1.0, 4.0]).endswith("run 0m32s left")
