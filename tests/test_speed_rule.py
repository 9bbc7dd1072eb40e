"""The rule benchmarks/speed.py applies with --control: the verdicts RESULTS reports come from this function."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def speed():
    saved = list(sys.path)  # speed.py puts benchmarks/ on the path to import its anchor: undone after the module
    try:
        spec = importlib.util.spec_from_file_location("speed", BENCHMARKS / "speed.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path[:] = saved


def run(row: str, accuracy: float, wall: float) -> dict:
    return {"row": row, "accuracy": accuracy, "wall_s": wall, "train_s": wall, "train_flops": 1, "eval_flops": 1}


def verdicts(speed, runs):
    return {v["row"]: v for v in speed.against_control(runs, "off")}


def test_a_row_pays_only_when_it_beats_the_control_by_more_than_the_larger_seed_range(speed):
    runs = [run("off", 0.860, 100), run("off", 0.858, 100),  # range 0.2 points
            run("wide", 0.866, 90), run("wide", 0.860, 90),  # +0.4 over off, but its own range is 0.6
            run("narrow", 0.863, 120), run("narrow", 0.862, 120),  # +0.35 over off, both ranges <= 0.2
            run("worse", 0.850, 100), run("worse", 0.849, 100)]
    v = verdicts(speed, runs)
    assert v["wide"]["bar"] == pytest.approx(0.006) and v["wide"]["pays"] is False
    assert v["narrow"]["bar"] == pytest.approx(0.002) and v["narrow"]["pays"] is True
    assert v["narrow"]["diff"] == pytest.approx(0.0035) and v["narrow"]["wall_ratio"] == pytest.approx(1.2)
    assert v["worse"]["pays"] is False and "off" not in v


def test_one_seed_gets_no_verdict_rather_than_a_bar_of_zero(speed):
    runs = [run("off", 0.86, 100), run("off", 0.85, 100), run("single", 0.95, 100)]
    assert verdicts(speed, runs)["single"] == pytest.approx(
        {"row": "single", "diff": 0.095, "bar": None, "pays": None, "wall_ratio": 1.0})
