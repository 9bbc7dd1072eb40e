"""End to end through the CLI, the reproducibility proofs, and the errors a user can hit."""

import json
from pathlib import Path
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from imagefit.cli import main

from .conftest import TINY


def run(capsys, *argv) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def fails(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    return err


def weights(path):
    return load_file(str(path))


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_train_evaluate_predict_end_to_end(capsys, cifar_dir, tmp_path):
    r = run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/a")
    assert set(r) >= {"accuracy", "bundle", "seconds", "params", "epochs"}
    confusion = json.load(open(tmp_path / "runs/a/metrics.json"))["test"]["confusion"]
    assert r["epochs"] == 2 and r["n"] == 40 and sum(map(sum, confusion)) == 40
    assert r["accuracy"] == sum(confusion[i][i] for i in range(10)) / 40  # the diagonal's share
    for name in ("bundle.safetensors", "curves.png", "confusion.png", "metrics.json", "config.yaml",
                 "checkpoints/last.pt", "checkpoints/best.safetensors"):
        assert (tmp_path / "runs/a" / name).exists(), name

    e = run(capsys, "evaluate", "--bundle", "runs/a", "--data", str(cifar_dir))
    assert e["n"] == 40 and e["accuracy"] == pytest.approx(r["accuracy"])
    assert len(e["per_class"]) == 10 and len(e["confusion"]) == 10

    from PIL import Image
    Image.new("RGB", (50, 40), (200, 30, 30)).save(tmp_path / "cat.png")
    Image.new("L", (20, 20), 90).save(tmp_path / "dog.jpg")
    p = run(capsys, "predict", "--bundle", "runs/a", str(tmp_path / "cat.png"), str(tmp_path / "dog.jpg"),
            "--top-k", "3")
    assert p["n"] == 2 and len(p["predictions"][0]["top"]) == 3
    probs = [t["probability"] for t in p["predictions"][0]["top"]]
    import imagefit
    expected = imagefit.load("runs/a").probabilities([tmp_path / "cat.png"])[0].sort(descending=True).values[:3]
    assert probs == pytest.approx(expected.tolist(), abs=1e-6)  # the bundle's own probabilities, best first
    every = run(capsys, "predict", "--bundle", "runs/a", str(tmp_path / "dog.jpg"), "--top-k", "10")
    assert sum(t["probability"] for t in every["predictions"][0]["top"]) == pytest.approx(1, abs=1e-5)


def test_imagefolder_tree_end_to_end(capsys, folder_dir):
    r = run(capsys, "train", "--data", str(folder_dir), *TINY, "--size", "24", "--out", "runs/f")
    assert r["n"] == 12
    e = run(capsys, "evaluate", "--bundle", "runs/f/bundle.safetensors")  # data folder from the bundle
    assert e["accuracy"] == pytest.approx(r["accuracy"])


def test_same_seed_gives_bitwise_identical_weights(capsys, cifar_dir):
    args = ["train", "--data", str(cifar_dir), *TINY, "--dropout", "0.3", "--rotation", "10", "--cutout", "8"]
    run(capsys, *args, "--out", "runs/s1")
    run(capsys, *args, "--out", "runs/s2")
    run(capsys, *args, "--out", "runs/s3", "--seed", "1")
    assert same_weights("runs/s1/bundle.safetensors", "runs/s2/bundle.safetensors")
    assert not same_weights("runs/s1/bundle.safetensors", "runs/s3/bundle.safetensors")


def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(capsys, cifar_dir):
    args = ["train", "--data", str(cifar_dir), *TINY, "--dropout", "0.3", "--epochs", "3"]
    full = run(capsys, *args, "--out", "runs/full")
    # 108 training images / 16 = 6 steps an epoch: stop in the middle of epoch 1, then again in epoch 2.
    stopped = run(capsys, *args, "--out", "runs/cut", "--stop-after-steps", "3")
    assert stopped["stopped"] == "interrupted" and stopped["step"] == 3
    again = run(capsys, "train", "--resume", "runs/cut", "--stop-after-steps", "10")
    assert again["epoch"] == 1 and again["step"] == 4
    resumed = run(capsys, "train", "--resume", "runs/cut")
    assert same_weights("runs/full/bundle.safetensors", "runs/cut/bundle.safetensors")
    cut = json.load(open("runs/cut/metrics.json"))["history"]
    assert [h.pop("resumed", False) for h in cut] == [True, True, False]  # epochs finished by a resuming process
    assert json.load(open("runs/full/metrics.json"))["history"] == cut
    assert resumed["accuracy"] == full["accuracy"] and Path("runs/cut/curves.png").stat().st_size > 0


def test_policies_mixing_and_the_weights_average_train_resume_exactly_and_are_bundled(capsys, cifar_dir):
    args = ["train", "--data", str(cifar_dir), *TINY, "--epochs", "3", "--augment-policy", "rand-m9-n2",
            "--color-jitter", "0.4", "--hue", "0.05", "--random-erasing", "0.25", "--mixup", "0.2", "--cutmix", "1",
            "--label-smoothing", "0.1", "--ema", "0.9"]
    run(capsys, *args, "--out", "runs/full")
    run(capsys, *args, "--out", "runs/cut", "--stop-after-steps", "8")
    run(capsys, "train", "--resume", "runs/cut")
    assert same_weights("runs/full/bundle.safetensors", "runs/cut/bundle.safetensors")
    history = json.load(open("runs/full/metrics.json"))["history"]
    assert all(0 <= h["train_accuracy"] <= 1 and h["train_loss"] > 0 for h in history)
    # The bundle holds the average: the best epoch's (chosen on validation), or without validation the last one.
    bundle, best = weights("runs/full/bundle.safetensors"), weights("runs/full/checkpoints/best.safetensors")
    assert all(bundle[k].equal(best[k]) for k in best)
    run(capsys, *args, "--val-fraction", "0", "--out", "runs/noval")
    from imagefit.checkpoint import load_checkpoint
    last = load_checkpoint(Path("runs/noval/checkpoints/last.pt"))
    bundle = weights("runs/noval/bundle.safetensors")
    assert all(bundle[k].equal(last["ema"][k]) for k in bundle)
    assert not all(last["ema"][k].equal(v) for k, v in last["model"].items() if v.is_floating_point())


def test_run_is_tracked_in_a_real_mlflow_store(capsys, cifar_dir, tmp_path):
    args = [a for a in TINY if a not in ("--tracking-uri", "none")]
    stopped = run(capsys, "train", "--data", str(cifar_dir), *args, "--out", "runs/m", "--experiment", "tests",
                  "--stop-after-steps", "8")  # in epoch 2: the resumed run must continue the same MLflow run
    assert stopped["stopped"] == "interrupted"
    r = run(capsys, "train", "--resume", "runs/m")
    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    got = client.get_run(r["mlflow_run_id"])
    assert got.data.params["optim.lr"] == "0.1" and got.data.params["model.model"] == "resnet"
    assert [m.step for m in client.get_metric_history(got.info.run_id, "val_accuracy")] == [1, 2]
    assert got.data.metrics["test_accuracy"] == pytest.approx(r["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert {"bundle.safetensors", "curves.png", "confusion.png", "metrics.json", "model"} <= artifacts
    # the bundle as an MLflow model in its run: loaded back by MLflow, it answers what the bundle answers
    assert r["mlflow_model"] == f"runs:/{r['mlflow_run_id']}/model"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    import base64
    import pandas as pd
    from PIL import Image
    Image.new("RGB", (32, 32), (20, 120, 200)).save(tmp_path / "blue.png")
    answer = mlflow.pyfunc.load_model(r["mlflow_model"]).predict(
        pd.DataFrame({"image": [base64.b64encode((tmp_path / "blue.png").read_bytes()).decode()]}))
    import imagefit
    top = imagefit.load("runs/m").predict([tmp_path / "blue.png"])[0][0]
    assert answer.loc[0, "class1"] == top["class"]
    assert answer.loc[0, "probability1"] == pytest.approx(top["probability"], abs=1e-6)
    e = run(capsys, "evaluate", "--bundle", "runs/m", "--experiment", "tests")  # the same (default) store
    assert client.get_run(e["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == r["mlflow_run_id"]


def test_existing_run_folder_is_never_overwritten(capsys, cifar_dir):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--epochs", "1", "--out", "runs/x")
    before = open("runs/x/bundle.safetensors", "rb").read()
    err = fails(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/x")
    assert "already holds a run; continue it with --resume runs/x" in err
    assert open("runs/x/bundle.safetensors", "rb").read() == before


def test_truncated_checkpoint_and_bundle_are_named(capsys, cifar_dir):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/t", "--stop-after-steps", "2")
    ckpt = "runs/t/checkpoints/last.pt"
    data = open(ckpt, "rb").read()
    open(ckpt, "wb").write(data[: len(data) // 2])
    assert "checkpoint runs/t/checkpoints/last.pt is damaged or truncated" in fails(capsys, "train", "--resume", "runs/t")

    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/b", "--epochs", "1")
    data = open("runs/b/bundle.safetensors", "rb").read()
    open("runs/b/bundle.safetensors", "wb").write(data[: len(data) - 100])
    assert "runs/b/bundle.safetensors is damaged" in fails(capsys, "evaluate", "--bundle", "runs/b",
                                                          "--data", str(cifar_dir))
    assert "no bundle at nowhere" in fails(capsys, "predict", "--bundle", "nowhere", "x.png")


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet19"], "unknown model 'resnet19'; did you mean"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--epochs", "many"], "--epochs got 'many', which is not an integer"),
    (["--optimizer", "lbfgs"], "--optimizer must be one of sgd, adam, adamw"),
    (["--recipe", "nope"], "unknown recipe 'nope'; available:"),
    (["--loss", "nll", "--label-smoothing", "0.1"], "--label-smoothing needs --loss cross-entropy"),
    (["--widths", "256,512", "--max-params", "1000000"], "over --max-params 1,000,000"),
    (["--recipe", "fast", "--model", "resnet20"], "recipe fast is tuned for --model fastnet and cannot "
                                                  "honour --model resnet20"),
    (["--model", "resnet20"], "--blocks does not apply to --model resnet20"),
    (["--progressive-sizes", "16,40"], "must not exceed --size 32"),
    (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_options_are_one_line_errors(capsys, cifar_dir, argv, message):
    assert message in fails(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/bad", *argv)


def test_resume_refuses_new_options(capsys, cifar_dir):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/r", "--stop-after-steps", "2")
    assert "--resume continues a run with its saved config; drop --lr" in fails(
        capsys, "train", "--resume", "runs/r", "--lr", "0.5")


def test_predict_names_a_corrupt_upload(capsys, cifar_dir, tmp_path):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/p", "--epochs", "1")
    (tmp_path / "bad.jpg").write_bytes(b"GIF89a garbage")
    assert "bad.jpg" in fails(capsys, "predict", "--bundle", "runs/p", str(tmp_path / "bad.jpg"))


def test_sigint_stops_cleanly_and_resumes(cifar_dir, tmp_path):
    """A real Ctrl-C mid-training: the process saves its place, exits, and the run continues with --resume."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "imagefit", "train", "--data", str(cifar_dir), *TINY, "--epochs", "200",
            "--out", "runs/sig", "--progress", "lines", "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # wait until training is under way
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(2)
    out, err = proc.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 130 and result["stopped"] == "interrupted" and result["signal"] == "SIGINT", err
    resumed = subprocess.run([sys.executable, "-m", "imagefit", "train", "--resume", "runs/sig",
                              "--stop-after-steps", "1", "--json"], capture_output=True, text=True, env=env)
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["stopped"] == "interrupted", resumed.stderr


FAST = ["--recipe", "fast", "--batch-size", "16", "--epochs", "3", "--progressive-sizes", "16",
        "--tracking-uri", "none"]


def test_fast_recipe_trains_and_resumes_exactly(capsys, cifar_dir):
    """The fast recipe's moving parts (whitening init, lookahead, alternating flip, progressive resizing, the
    triangle schedule, TTA) through the CLI; a run stopped twice ends bitwise where an unstopped one does."""
    full = run(capsys, "train", "--data", str(cifar_dir), *FAST, "--out", "runs/fast")
    assert full["params"] == 1_972_792 and full["n"] == 40  # airbench94's widths
    e = run(capsys, "evaluate", "--bundle", "runs/fast", "--data", str(cifar_dir))
    assert e["accuracy"] == pytest.approx(full["accuracy"])  # the whitening weights and TTA travel in the bundle
    # 120 training images / 16 = 7 steps an epoch: stop in epoch 1 (16 px), then in epoch 2.
    assert run(capsys, "train", "--data", str(cifar_dir), *FAST, "--out", "runs/cut",
               "--stop-after-steps", "3")["stopped"] == "interrupted"
    assert run(capsys, "train", "--resume", "runs/cut", "--stop-after-steps", "9")["epoch"] == 1
    run(capsys, "train", "--resume", "runs/cut")
    assert same_weights("runs/fast/bundle.safetensors", "runs/cut/bundle.safetensors")


def test_amp_auto_follows_the_cpu_and_bundles_record_float32_figures(capsys, cifar_dir, monkeypatch):
    """`--amp auto` trains in bfloat16 only on CPUs with native bfloat16; whatever precision trained, the accuracy a
    run records is the float32 one that `evaluate` reproduces from its bundle."""
    import torch

    from imagefit import runtime
    cpu = torch.device("cpu")
    for native, expected in ((True, torch.bfloat16), (False, None)):
        with monkeypatch.context() as patch:
            patch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
            factory, scaler = runtime.autocast_for(cpu, "auto")
        with factory():
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        assert dtype == expected and scaler is None, native

    r = run(capsys, "train", "--data", str(cifar_dir), *TINY, "--amp", "bf16", "--out", "runs/bf16")
    e = run(capsys, "evaluate", "--bundle", "runs/bf16", "--data", str(cifar_dir))
    assert e["accuracy"] == pytest.approx(r["accuracy"]) and e["loss"] == pytest.approx(r["loss"], rel=1e-5)
