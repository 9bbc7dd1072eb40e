"""torchrun with 2 CPU processes (Gloo): the same global batches as one process, one bundle and one tracked run
written by rank 0, and the same result as one process up to BatchNorm's per-rank statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from imagefit.augment import Normalize
from imagefit.config import DataConfig
from imagefit.data import load_splits
from imagefit.loader import Loader

ARGS = ["train", "--model", "resnet", "--blocks", "1", "--widths", "8", "--epochs", "2", "--batch-size", "16",
        "--seed", "3", "--json"]


def test_shards_make_up_the_global_batch(cifar_dir):
    data = load_splits(DataConfig(data=str(cifar_dir), val_fraction=0), 0)
    norm = Normalize(data.mean, data.std, torch.device("cpu"), False)
    whole = list(Loader(data.train, 16, norm, shuffle=True, drop_last=True, seed=5).batches(1))
    parts = [list(Loader(data.train, 16, norm, shuffle=True, drop_last=True, seed=5, shard=(r, 2)).batches(1))
             for r in range(2)]
    for (_, x, y), (_, x0, y0), (_, x1, y1) in zip(whole, *parts):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


def test_torchrun_two_processes_match_one(cifar_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    uri = f"sqlite:///{tmp_path}/m.db"
    one = subprocess.run([sys.executable, "-m", "imagefit", *ARGS, "--data", str(cifar_dir), "--tracking-uri", uri,
                          "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "imagefit", *ARGS, "--data", str(cifar_dir), "--tracking-uri", uri,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    results = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and results[0]["bundle"].endswith("bundle.safetensors")  # rank 0 reports, once
    a, b = load_file(str(tmp_path / "one" / "bundle.safetensors")), load_file(str(tmp_path / "two" /
                                                                                    "bundle.safetensors"))
    assert a.keys() == b.keys()  # no "module." prefix: the bare model is saved
    # the same global batches and averaged gradients: weights stay close (BatchNorm statistics are per rank)
    drift = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert drift < 0.5, drift
    first = json.loads((tmp_path / "one" / "metrics.json").read_text())["history"][0]["train_loss"]
    first2 = json.loads((tmp_path / "two" / "metrics.json").read_text())["history"][0]["train_loss"]
    assert abs(first - first2) < 0.05 * first
    import mlflow
    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("imagefit").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["one", "two"]  # one tracked run per training, not per rank
