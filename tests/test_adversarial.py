"""Adversarial inputs and faults (issue 26): each bad input a careless user or an attacker can give gets exit 1, one
line naming the problem and the fix (no traceback), and every file that was there before is byte-identical after.
The corpus is made here, small, by the tests themselves."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from imagefit.cli import main

from .conftest import serving, tiny_bundle, write_cifar

TINY = ["--model", "resnet", "--blocks", "1", "--widths", "8", "--batch-size", "16", "--epochs", "1",
        "--tracking-uri", "none"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` and its content's hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
            and p.relative_to(root).parts[0] != "cache"}  # imagefit's own cache of decoded data, not a user file


def refused(capsys, root: Path, *argv: str) -> str:
    """Run the CLI on a bad input: exit 1, one line on stderr without a traceback, nothing under `root` changed."""
    before = snapshot(root)
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 1, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and len(lines[0]) <= 700, err
    assert snapshot(root) == before, "a file that was there before changed"
    return lines[0]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    data, run = tiny_bundle(root)
    return root, data, run


# ---------------------------------------------------------------------------------------------- 1. data loss

@pytest.mark.parametrize("target", ["bundle.safetensors", "checkpoints/last.pt", "checkpoints/best.safetensors"])
def test_export_never_writes_over_a_bundle_or_checkpoint(capsys, bundle_dir, target):
    root, data, run = bundle_dir
    for force in ([], ["--force"]):
        msg = refused(capsys, root, "export", "--bundle", str(run), "--out", str(run / target), *force)
        assert "is a bundle or checkpoint, which an export never replaces" in msg


def test_export_replaces_a_user_file_only_with_force(capsys, bundle_dir, tmp_path):
    root, data, run = bundle_dir
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"my own notes, not an export")
    msg = refused(capsys, tmp_path, "export", "--bundle", str(run), "--out", str(mine))
    assert "exists and is not an imagefit export" in msg and "--force" in msg
    assert main(["export", "--bundle", str(run), "--out", str(tmp_path / "e.onnx")]) == 0
    assert main(["export", "--bundle", str(run), "--out", str(tmp_path / "e.onnx")]) == 0  # an earlier export: fine
    assert main(["export", "--bundle", str(run), "--out", str(mine), "--force"]) == 0
    assert mine.read_bytes() != b"my own notes, not an export"


def test_train_into_a_folder_of_user_files_is_refused(capsys, cifar_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("config.yaml", "metrics.json", "curves.png"):
        (folder / name).write_text(f"the user's {name}")
    msg = refused(capsys, tmp_path, "train", "--data", str(cifar_dir), *TINY, "--out", str(folder))
    assert "is not empty and is not a run" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--data", str(cifar_dir), *TINY, "--out", str(empty)]) == 0  # new or empty: fine


@pytest.mark.parametrize("argv, recipe, message", [
    (["--lr", "nan"], None, "--lr must be a finite number (got nan)"),
    (["--weight-decay", "nan"], None, "--weight-decay must be a finite number"),
    (["--lr", "inf"], None, "--lr must be a finite number (got inf)"),
    ([], "optim: {lr: .nan}\n", "--lr must be a finite number"),
])
def test_non_finite_numbers_are_refused_before_training(capsys, cifar_dir, tmp_path, argv, recipe, message):
    extra = []
    if recipe:
        (tmp_path / "r.yaml").write_text(recipe)
        extra = ["--recipe", str(tmp_path / "r.yaml")]
    assert message in refused(capsys, tmp_path, "train", "--data", str(cifar_dir), *TINY, *argv, *extra,
                              "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_loss_that_becomes_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(capsys, cifar_dir, tmp_path):
    argv = ["train", "--data", str(cifar_dir), *TINY, "--epochs", "3", "--schedule", "step", "--milestones", "1",
            "--gamma", "1", "--out", str(tmp_path / "run")]
    assert main([*argv, "--stop-after-steps", "6"]) == 0  # epoch 1 finishes (6 steps): a good checkpoint
    good = load_file_checkpoint(tmp_path / "run")
    # then the rate explodes: the config in the checkpoint is what resume uses, so poison it there
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    cfg = json.loads(state["config"])
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = 1e30
    state["config"] = json.dumps(cfg)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's own start-up line
    assert err.startswith("imagefit train: error:") and re.search("non-finite at epoch 2, step [1-6] of 6", err), err
    assert "last good checkpoint (end of epoch 1) is kept" in err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before  # never overwritten with NaNs
    assert good["epoch"] == 1 and not (tmp_path / "run" / "bundle.safetensors").exists()


def load_file_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_16_bit_pngs_are_scaled_to_8_bits_in_train_predict_and_serve(capsys, bundle_dir, tmp_path):
    from imagefit.preprocessing import Preprocessing
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    pixels = Preprocessing(32, "crop", [0.5] * 3, [0.2] * 3).decode(str(tmp_path / "g16.png"))
    assert (pixels[0].numpy().astype(int) - np.round(ramp / 257)).__abs__().max() <= 1
    assert (pixels == 255).float().mean() < 0.01  # PIL's own conversion turned 99% of them white
    root, data, run = bundle_dir
    Image.fromarray(np.round(ramp / 257).astype(np.uint8)).save(tmp_path / "g8.png")
    capsys.readouterr()
    assert main(["predict", "--bundle", str(run), str(tmp_path / "g16.png"), str(tmp_path / "g8.png"), "--top-k",
                 "10", "--json"]) == 0
    preds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["predictions"]
    assert preds[0]["top"] == preds[1]["top"]  # the 16-bit file predicts as its 8-bit twin


def test_test_labels_out_of_range_are_refused_before_training(capsys, tmp_path):
    data = write_cifar(tmp_path / "data")
    path = data / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][3] = 12
    path.write_bytes(pickle.dumps(batch, protocol=2))
    t0 = time.perf_counter()
    msg = refused(capsys, tmp_path, "train", "--data", str(data), *TINY, "--out", str(tmp_path / "run"))
    assert "test_batch has labels outside 0..9 (e.g. 12)" in msg and not (tmp_path / "run" / "checkpoints").exists()
    assert time.perf_counter() - t0 < 30


def test_written_files_keep_the_umask_mode(cifar_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["train", "--data", str(cifar_dir), *TINY, "--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    for name in ("bundle.safetensors", "config.yaml", "metrics.json", "curves.png", "checkpoints/last.pt"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


# ---------------------------------------------------------------------------------------------- 2. the server

def test_silent_sockets_neither_block_the_server_nor_linger(bundle_dir):
    root, data, run = bundle_dir
    with serving(run, "--request-timeout", "1", "--threads", "1",
                 env={"IMAGEFIT_CACHE": str(root / "cache")}) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(70)]
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert httpx.get(url + "/model", timeout=5).status_code == 200
        time.sleep(1.5)
        slow.settimeout(5)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == 408
        for s in idle:
            s.settimeout(5)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")  # closed with an answer, not held open
            s.close()
        slow.close()


def test_a_port_in_use_is_one_line(capsys, bundle_dir):
    root, data, run = bundle_dir
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        msg = refused(capsys, root, "serve", "--bundle", str(run), "--port", str(port))
    assert f"port {port} on 127.0.0.1 is in use" in msg


# ---------------------------------------------------------------------------------------------- 3. clear messages

def _edited_bundle(run: Path, dst: Path, edit) -> Path:
    with safe_open(str(run / "bundle.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["imagefit"])
    weights = load_file(str(run / "bundle.safetensors"))
    edit(meta, weights)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(dst / "bundle.safetensors"), metadata={"imagefit": json.dumps(meta)})
    return dst


def _set(path: str, value):
    def edit(meta, weights):
        *keys, last = path.split(".")
        d = meta
        for k in keys:
            d = d[k]
        d[last] = value
    return edit


def _nan_weights(meta, weights):
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))


BAD_BUNDLES = {
    "size -4": (_set("preprocessing.size", -4), "preprocessing size is '-4'"),
    "size abc": (_set("preprocessing.size", "abc"), "preprocessing size is 'abc'"),
    "size 2048": (_set("preprocessing.size", 1024), "size 1024 is not the 32 px the model was trained at"),
    "std 0": (_set("preprocessing.std", [0.2, 0.0, 0.2]), "std is"),
    "mean of length 2": (_set("preprocessing.mean", [0.5, 0.5]), "mean is"),
    "duplicate classes": (_set("classes", ["cat"] * 10), "two or more distinct"),
    "unknown resize": (_set("preprocessing.resize", "stretch"), "resize is 'stretch'"),
    "no classes": (_set("classes", []), "lacks its classes"),
    "no preprocessing": (_set("preprocessing", None), "lacks its preprocessing"),
    "nan weights": (_nan_weights, "non-finite weights"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bad_bundles_are_refused_when_loaded_by_predict_evaluate_and_serve(capsys, bundle_dir, tmp_path, case):
    root, data, run = bundle_dir
    edit, message = BAD_BUNDLES[case]
    bad = _edited_bundle(run, tmp_path / "bad", edit)
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "x.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for argv in (["predict", "--bundle", str(bad), str(tmp_path / "x.png")],
                 ["evaluate", "--bundle", str(bad), "--data", str(data), "--tracking-uri", "none"],
                 ["serve", "--bundle", str(bad), "--port", str(port)]):
        assert message in refused(capsys, tmp_path, *argv), argv


@pytest.mark.parametrize("text, message", [
    ("- 1\n- 2\n", "must be a mapping of sections to fields"),
    ("42\n", "not a int"),
    ("fixed: 5\n", "'fixed' must list field names"),
    ("a: &a [1, 2]\nb: [*a, *a]\n", "uses a YAML alias"),
    ("optim: {lr: [unclosed\n", "is not valid YAML"),
])
def test_bad_recipes_get_one_line_errors(capsys, cifar_dir, tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    assert message in refused(capsys, tmp_path, "train", "--recipe", str(tmp_path / "r.yaml"), "--data",
                              str(cifar_dir), "--out", str(tmp_path / "run"))


def test_a_recipe_that_is_not_utf8_and_an_alias_bomb(capsys, cifar_dir, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("optim: {lr: 0.1}  # café\n".encode("latin-1"))
    assert "is not UTF-8 text" in refused(capsys, tmp_path, "train", "--recipe", str(tmp_path / "latin1.yaml"),
                                          "--data", str(cifar_dir))
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
                                                         f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
                                                         for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\n")
    assert "uses a YAML alias" in refused(capsys, tmp_path, "train", "--recipe", str(tmp_path / "bomb.yaml"),
                                          "--data", str(cifar_dir))


def test_data_inputs_that_are_not_data(capsys, tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    assert "is a file, not a folder" in refused(capsys, tmp_path, "train", "--data", str(tmp_path / "file.txt"))
    data = write_cifar(tmp_path / "data")
    path = data / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][0] = -1
    path.write_bytes(pickle.dumps(batch, protocol=2))
    assert "has labels outside 0..9 (e.g. -1)" in refused(capsys, tmp_path, "train", "--data", str(data), *TINY)


def test_symlinks_that_lead_nowhere_are_named_or_skipped(capsys, folder_dir, tmp_path):
    (folder_dir / "train" / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder_dir / "train" / "cat" / "loop.jpg").symlink_to(folder_dir / "train" / "cat" / "loop.jpg")
    msg = refused(capsys, tmp_path, "train", "--data", str(folder_dir), *TINY)
    assert "2 file(s) could not be read as images" in msg and "dangling link or a link loop" in msg
    assert main(["train", "--data", str(folder_dir), *TINY, "--skip-bad-images", "--out", str(tmp_path / "r")]) == 0


def test_a_test_split_lacking_a_class_names_the_missing_folder(capsys, folder_dir, tmp_path):
    import shutil
    shutil.rmtree(folder_dir / "test" / "frog")
    msg = refused(capsys, tmp_path, "train", "--data", str(folder_dir), *TINY)
    assert "has no folder for class 'frog', which train/ has; add" in msg


def test_non_utf8_class_folders_are_refused_at_the_start(capsys, folder_dir, tmp_path):
    os.rename(folder_dir / "train" / "dog", os.fsencode(folder_dir / "train") + b"/d\xffg")
    assert "is not valid UTF-8; rename it" in refused(capsys, tmp_path, "train", "--data", str(folder_dir), *TINY)


def test_predict_names_the_right_flag_and_survives_a_closed_pipe(capsys, bundle_dir, tmp_path):
    root, data, run = bundle_dir
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    msg = refused(capsys, tmp_path, "predict", "--bundle", str(run), str(tmp_path / "broken.png"))
    assert "pass --skip-bad-images to predict the others" in msg
    for i in range(30):
        Image.new("RGB", (32, 32), (i * 8, 0, 0)).save(tmp_path / f"{i}.png")
    proc = subprocess.run(f"{sys.executable} -m imagefit predict --bundle {run} {tmp_path} --skip-bad-images "
                          f"--format csv | head -n 2", shell=True, capture_output=True, text=True,
                          env={**os.environ, "IMAGEFIT_CACHE": str(root / "cache")})
    assert len(proc.stdout.splitlines()) == 2 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv, message", [
    (["train", "--epoch", "3"], "unknown option --epoch; did you mean --epochs?"),
    (["train", "--mo", "resnet"], "unknown option --mo; did you mean"),
    (["evaluate", "--bundle", "x", "--splt", "val"], "did you mean --split?"),
])
def test_abbreviated_and_misspelt_flags_are_one_line(capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("where", ["a file", "inside a file", "read-only"])
def test_out_that_cannot_be_written_is_refused_before_any_work(capsys, cifar_dir, tmp_path, where):
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the check is for other users")
    (tmp_path / "f").write_text("a file")
    (tmp_path / "ro").mkdir()
    out = {"a file": tmp_path / "f", "inside a file": tmp_path / "f" / "run", "read-only": tmp_path / "ro" / "run"}
    if where == "read-only":
        (tmp_path / "ro").chmod(0o555)
    try:
        msg = refused(capsys, tmp_path, "train", "--data", str(cifar_dir), *TINY, "--out", str(out[where]))
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "cannot write in" in msg or "is not empty" in msg


# ---------------------------------------------------------------------------------------------- 4. faults

def test_two_runs_into_one_folder_cannot_both_write(cifar_dir, tmp_path):
    from imagefit.files import RunLock
    from imagefit.errors import ImagefitError
    held = RunLock(tmp_path / "run").acquire()
    try:
        code = subprocess.run([sys.executable, "-m", "imagefit", "train", "--data", str(cifar_dir), *TINY, "--out",
                               str(tmp_path / "run")], capture_output=True, text=True)
        assert code.returncode == 1 and f"is in use by another imagefit process (pid {os.getpid()})" in code.stderr
        with pytest.raises(ImagefitError, match="in use by another imagefit process"):
            RunLock(tmp_path / "run").acquire()
    finally:
        held.release()
    RunLock(tmp_path / "run").acquire().release()  # a dead or finished holder leaves no stale lock


def test_stale_temporaries_are_removed_and_a_finished_run_is_not_resumed(capsys, cifar_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(cifar_dir), *TINY, "--out", str(run), "--stop-after-steps", "2"]) == 0
    orphan = run / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"x" * 1000)  # what a kill -9 during a checkpoint write leaves
    assert main(["train", "--resume", str(run)]) == 0
    assert not orphan.exists()
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "finished already (1 of 1 epochs); nothing to resume" in err
    assert json.loads(out.strip().splitlines()[-1])["stopped"] == "finished already"
    assert snapshot(run) == before  # nothing retrained, nothing rewritten


def test_a_full_disk_is_one_line_and_the_last_file_stays(tmp_path, monkeypatch):
    import errno

    from imagefit.errors import ImagefitError
    from imagefit.files import atomic_write_text
    target = tmp_path / "metrics.json"
    target.write_text("the previous figures")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(ImagefitError, match="no space left on the device to write .*metrics.json"):
        atomic_write_text(target, "new figures")
    monkeypatch.undo()
    assert target.read_text() == "the previous figures" and list(tmp_path.iterdir()) == [target]


def test_sigterm_outside_the_training_loop_stops_with_a_line_and_143(capsys, cifar_dir, tmp_path, monkeypatch):
    import signal

    import imagefit.training.train as train_module
    real = train_module.load_splits

    def terminated_while_loading(*args, **kwargs):  # a SIGTERM that lands during start-up
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return real(*args, **kwargs)
    monkeypatch.setattr(train_module, "load_splits", terminated_while_loading)
    capsys.readouterr()
    assert main(["train", "--data", str(cifar_dir), *TINY, "--out", str(tmp_path / "run")]) == 143
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stopped by SIGTERM before it finished" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was written, so nothing is left
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    from imagefit.cli import stopped_line  # each command's line names its own way to continue
    assert "'imagefit train --resume RUN_DIR'" in err
    assert "same 'imagefit generate' command again" in stopped_line("generate", "SIGTERM")
    assert "imagefit fine-tune --resume" in stopped_line("fine-tune", "SIGINT")
    assert "resume" not in stopped_line("predict", "SIGINT")


def test_a_tiny_pickle_that_would_expand_to_gigabytes_is_refused_before_numpy_sees_it(capsys, tmp_path):
    data = write_cifar(tmp_path / "data")
    nested = [0]
    for _ in range(34):  # 2**34 elements under np.asarray, from a few hundred bytes of shared references
        nested = [nested, nested]
    blob = pickle.dumps({b"data": nested, b"labels": [0]}, protocol=2)
    assert len(blob) < 1000
    (data / "cifar-10-batches-py" / "data_batch_3").write_bytes(blob)
    msg = refused(capsys, tmp_path, "train", "--data", str(data), *TINY)
    assert "data_batch_3 holds a list as its data, not N×3072 uint8" in msg
    (data / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    assert "data_batch_3 is not a readable CIFAR-10 batch" in refused(capsys, tmp_path, "train", "--data", str(data),
                                                                       *TINY)


def test_resume_refuses_changed_data_and_follows_moved_data(capsys, tmp_path):
    data = write_cifar(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--epochs", "2", "--out", str(run), "--stop-after-steps", "2"]) == 0
    batch_path = data / "cifar-10-batches-py" / "data_batch_1"
    original = batch_path.read_bytes()
    batch = pickle.loads(original)
    keep = len(batch[b"labels"]) - 5
    batch[b"data"], batch[b"labels"] = batch[b"data"][:keep], batch[b"labels"][:keep]
    batch_path.write_bytes(pickle.dumps(batch, protocol=2))  # 5 images fewer
    msg = refused(capsys, tmp_path, "train", "--resume", str(run))
    assert "was trained on other data: its train split has" in msg and "resume on the data it started with" in msg
    batch_path.write_bytes(original)
    (tmp_path / "data").rename(tmp_path / "moved")
    assert "does not exist" in refused(capsys, tmp_path, "train", "--resume", str(run))
    assert main(["train", "--resume", str(run), "--data", str(tmp_path / "moved")]) == 0  # the same data, moved
    assert (run / "bundle.safetensors").exists()


def test_an_edited_config_yaml_is_named_on_resume(capsys, cifar_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(cifar_dir), *TINY, "--epochs", "2", "--out", str(run),
                 "--stop-after-steps", "2"]) == 0
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lr: 0.1", "lr: 0.5"))
    assert "config.yaml was edited (optim.lr: 0.5, the run has 0.1)" in refused(capsys, tmp_path, "train",
                                                                                 "--resume", str(run))
    (run / "config.yaml").write_text("optim: {lr: [broken\n")
    assert "no longer reads as the run's config" in refused(capsys, tmp_path, "train", "--resume", str(run))


def test_a_search_killed_mid_trial_retries_that_trial_on_restart(capsys, cifar_dir, tmp_path):
    import optuna
    import yaml
    from optuna.trial import TrialState

    def space(epochs: int) -> str:
        tree = {"fixed": {"model": {"model": "resnet", "blocks": [1], "widths": [8]},
                          "train": {"epochs": epochs, "batch_size": 16}, "data": {"val_fraction": 0.2}},
                "params": {"optim.lr": {"low": 0.01, "high": 0.5, "log": True}}}
        path = tmp_path / f"s{epochs}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return str(path)
    storage = f"sqlite:///{tmp_path / 'study' / 'optuna.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "imagefit", "search", "--space", space(500), "--data",
                               str(cifar_dir), "--trials", "2", "--sampler", "random", "--tracking-uri", "none",
                               "--out", str(tmp_path / "study")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # until trial 0 (the base config) is under way
            time.sleep(0.1)
            if (tmp_path / "study" / "optuna.db").exists():
                try:
                    running = optuna.load_study(study_name="imagefit", storage=storage).get_trials(
                        states=(TrialState.RUNNING,))
                except Exception:  # the schema is still being made
                    continue
                if running and "worker" in running[0].user_attrs:
                    break
        else:
            raise AssertionError(worker.stderr.read().decode())
    finally:
        worker.kill()  # kill -9: no clean-up of any kind
        worker.wait()
    capsys.readouterr()
    assert main(["search", "--space", space(1), "--data", str(cifar_dir), "--trials", "2", "--sampler", "random",
                 "--tracking-uri", "none", "--out", str(tmp_path / "study"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "trial 0 was left running by a process that is gone" in err
    trials = optuna.load_study(study_name="imagefit", storage=storage).get_trials()
    assert trials[0].state == TrialState.FAIL and not [t for t in trials if t.state == TrialState.RUNNING]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    # killed before or after trial 0 suggested its value: the retry has the value it was queued with
    assert retry.state == TrialState.COMPLETE
    assert retry.params == {**trials[0].system_attrs["fixed_params"], **trials[0].params}
    result = json.loads(out.strip().splitlines()[-1])
    assert result["base_trial"] == retry.number  # the base config's trial is not lost with the killed one


def test_an_unreachable_tracking_server_is_refused_within_seconds(capsys, cifar_dir, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    msg = refused(capsys, tmp_path, "train", "--data", str(cifar_dir), *TINY[:-2], "--tracking-uri",
                  f"http://127.0.0.1:{port}", "--out", str(tmp_path / "run"))
    assert f"cannot open the MLflow store at http://127.0.0.1:{port}" in msg and time.perf_counter() - t0 < 30
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [
    ["find-lr", "--model", "resnet", "--blocks", "1", "--widths", "8", "--steps", "5"],
    ["features", "--model", "resnet", "--blocks", "1", "--widths", "8", "--init-from", "nowhere"],
    ["generate", "train", "--preset", "tiny", "--steps", "2"],
    ["search", "--space", "s.yaml"],
])
def test_every_command_that_writes_refuses_an_out_inside_a_file_first(capsys, cifar_dir, tmp_path, argv):
    (tmp_path / "f").write_text("a file")
    msg = refused(capsys, tmp_path, *argv, "--data", str(cifar_dir), "--out", str(tmp_path / "f" / "out"))
    assert f"{tmp_path / 'f'} is a file" in msg


def test_an_epoch_redone_after_a_kill_logs_its_metrics_once(cifar_dir, tmp_path):
    import mlflow
    uri = f"sqlite:///{tmp_path}/m.db"
    run = tmp_path / "run"
    assert main(["train", "--data", str(cifar_dir), *TINY[:-2], "--tracking-uri", uri, "--epochs", "2", "--out",
                 str(run), "--stop-after-steps", "6"]) == 0  # epoch 1 done and checkpointed
    run_id = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["tracking_run_id"]
    client = mlflow.tracking.MlflowClient(uri)
    client.log_metric(run_id, "train_loss", 1.0, step=2)  # as if epoch 2 had logged, then been killed
    assert main(["train", "--resume", str(run)]) == 0
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2]  # the redone epoch 2 is not logged a second time
    assert client.get_run(run_id).info.status == "FINISHED"


def test_sigterm_in_the_final_evaluation_is_finished_by_resume(capsys, cifar_dir, tmp_path, monkeypatch):
    import signal

    from imagefit.training.train import Trainer
    real = Trainer._finish

    def terminated_while_evaluating(self, stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return real(self, stopped)
    monkeypatch.setattr(Trainer, "_finish", terminated_while_evaluating)
    assert main(["train", "--data", str(cifar_dir), *TINY, "--out", str(tmp_path / "run")]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err and not (tmp_path / "run" / "bundle.safetensors").exists()
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "run"), "--json"]) == 0  # evaluates and bundles, no retraining
    assert (tmp_path / "run" / "bundle.safetensors").exists()
