"""Export to ONNX and TorchScript: the contract's Normalize inside the graph, the metadata, the parity check."""

import json
import os

import pytest
import torch

from .conftest import CLASSES, tiny_bundle
from .test_train import fails, run


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny bundle and its ONNX export (named as in test_serve, whose tests these were)."""
    root = tmp_path_factory.mktemp("export")
    data, _ = tiny_bundle(root, export=True)
    return {"root": root, "data": data}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_parity_and_backends(capsys, served):
    from imagefit.deploy.inference import OnnxPredictor, load_predictor
    root = served["root"]
    meta = json.loads(OnnxPredictor(root / "run" / "model.onnx").session.get_modelmeta()
                      .custom_metadata_map["imagefit"])
    assert meta["classes"] == CLASSES and meta["preprocessing"]["size"] == 32 and len(meta["identity"]["sha256"]) == 64
    torch_p, onnx_p = load_predictor(root / "run", "pytorch"), load_predictor(root / "run")
    assert (torch_p.backend, onnx_p.backend) == ("pytorch", "onnxruntime")

    def spins(predictor) -> bool:  # the server's session does not busy-wait between runs; batch prediction's does
        try:
            return predictor.session.get_session_options().get_session_config_entry(
                "session.intra_op.allow_spinning") != "0"
        except Exception:  # not set: ONNX Runtime's default, spinning
            return True
    assert spins(onnx_p) and not spins(load_predictor(root / "run", spin=False))
    for n in (1, 7):  # dynamic batch
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
        for tta in ("none", "flip+crops"):
            assert (torch_p.probabilities(x, tta) - onnx_p.probabilities(x, tta)).abs().max() < 1e-5
    r = run(capsys, "export", "--bundle", str(root / "run"), "--format", "torchscript", "--out", "m.pt",
            "--data", str(served["data"]))
    assert r["parity_max_abs_diff"] <= 1e-4 and r["parity_images"] == 40
    scripted = torch.jit.load("m.pt", _extra_files=(extra := {"imagefit.json": ""}))
    assert json.loads(extra["imagefit.json"])["classes"] == CLASSES
    assert scripted(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_parity_failure_removes_the_export(capsys, served, monkeypatch):
    import imagefit.deploy.export
    monkeypatch.setattr(imagefit.deploy.export, "TOLERANCE", -1.0)  # no export can pass: the failure path
    err = fails(capsys, "export", "--bundle", str(served["root"] / "run"), "--out", "bad.onnx")
    assert "parity check failed" in err and not os.path.exists("bad.onnx")


def test_the_graph_takes_pixels_and_holds_the_contract(served):
    """The exported file normalizes by itself: raw [0, 255] pixels in, the bundle's logits out."""
    import onnxruntime as ort

    from imagefit.bundle import load_bundle
    bundle = load_bundle(served["root"] / "run")
    session = ort.InferenceSession(str(served["root"] / "run" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    got = torch.from_numpy(session.run(None, {"pixels": x.float().numpy()})[0])
    with torch.no_grad():
        want = bundle.model(bundle.preprocessing.normalizer()(x))
    assert (got - want).abs().max() < 1e-4
    meta = json.loads(session.get_modelmeta().custom_metadata_map["imagefit"])
    assert meta["preprocessing"] == bundle.preprocessing.to_dict() and meta["input"]["range"] == [0, 255]


def png_files(folder, classes: int, seed: int) -> list[str]:
    """One PNG per class of conftest's learnable images, in `folder`."""
    from PIL import Image

    from .conftest import class_images
    x, _ = class_images(1, classes, seed=seed)
    files = [str(folder / f"{i}.png") for i in range(len(x))]
    for f, img in zip(files, x):
        Image.fromarray(img).save(f)
    return files


def test_mlflow_pyfunc_model_answers_what_predict_answers(capsys, served, tmp_path):
    import base64

    import mlflow.pyfunc
    import pandas as pd

    root = served["root"]
    r = run(capsys, "export", "--bundle", str(root / "run"), "--format", "mlflow", "--out", str(tmp_path / "m"),
            "--data", str(served["data"]), "--parity-images", "8")
    assert r["format"] == "mlflow" and r["parity_max_abs_diff"] <= 1e-4 and (tmp_path / "m" / "MLmodel").exists()
    again = run(capsys, "export", "--bundle", str(root / "run"), "--format", "mlflow", "--out", str(tmp_path / "m"),
                "--data", str(served["data"]), "--parity-images", "8")
    assert again["export"] == str(tmp_path / "m")  # an earlier export of ours is replaced without --force
    files = png_files(tmp_path, classes=3, seed=7)
    expected = run(capsys, "predict", "--bundle", str(root / "run"), "--backend", "pytorch", "--top-k", "3", *files)
    model = mlflow.pyfunc.load_model(str(tmp_path / "m"))
    raw = [open(f, "rb").read() for f in files]
    for column in (raw, [base64.b64encode(b).decode() for b in raw], files):  # bytes, base64 (JSON serving), paths
        got = model.predict(pd.DataFrame({"image": column}))
        for row, want in zip(got.to_dict("records"), expected["predictions"]):
            assert [row[f"class{j}"] for j in (1, 2, 3)] == [t["class"] for t in want["top"]]
            assert [row[f"probability{j}"] for j in (1, 2, 3)] == pytest.approx(
                [t["probability"] for t in want["top"]], abs=1e-6)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    assert "is a folder that is not an imagefit MLflow export" in fails(
        capsys, "export", "--bundle", str(root / "run"), "--format", "mlflow", "--out", str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's"


def test_mlflow_export_under_mlflow_models_serve_and_the_registry(capsys, served, tmp_path):
    """The exported folder served by MLflow's own server (a real `mlflow models serve` process, JSON with base64
    images, as a client of that server sends), and registered in a model registry and loaded back by name."""
    import base64
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    from .conftest import free_port
    root = served["root"]
    run(capsys, "export", "--bundle", str(root / "run"), "--format", "mlflow", "--out", str(tmp_path / "m"))
    files = png_files(tmp_path, classes=2, seed=3)
    expected = run(capsys, "predict", "--bundle", str(root / "run"), "--backend", "pytorch", "--top-k", "3", *files)
    want = [[t["class"] for t in p["top"]] for p in expected["predictions"]]
    encoded = [base64.b64encode(Path(f).read_bytes()).decode() for f in files]

    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", str(tmp_path / "m"), "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True,  # MLflow execs `uvicorn` from PATH: this environment's
                              env={**os.environ, "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert [[row[f"class{j}"] for j in (1, 2, 3)] for row in got] == want

    uri = f"sqlite:///{tmp_path}/registry.db"
    client = mlflow.tracking.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("export", artifact_location=str(tmp_path / "artifacts"))
    logged = client.create_run(experiment).info.run_id
    client.log_artifacts(logged, str(tmp_path / "m"), "model")
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    try:
        version = mlflow.register_model(f"runs:/{logged}/model", "tiny-classifier").version
        model = mlflow.pyfunc.load_model(f"models:/tiny-classifier/{version}")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    rows = model.predict(pd.DataFrame({"image": encoded})).to_dict("records")
    assert [[row[f"class{j}"] for j in (1, 2, 3)] for row in rows] == want


def test_onnx_predictor_runs_torch_work_on_one_thread_and_restores_the_count(served):
    from unittest import mock

    from imagefit.deploy.inference import load_predictor
    predictor = load_predictor(served["root"] / "run", "onnx")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the guard must hold where torch has a pool of its own
    seen, original = [], predictor._logits

    def logits(x):
        seen.append(torch.get_num_threads())
        return original(x)
    with mock.patch.object(predictor, "_logits", logits):
        predictor.probabilities(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "flip")
    after = torch.get_num_threads()
    torch.set_num_threads(before)
    assert seen == [1, 1] and after == 2


def test_int8_export_keeps_the_answers_and_loads_like_any_onnx_file(capsys, served, monkeypatch):
    root = served["root"]
    r = run(capsys, "export", "--bundle", str(root / "run"), "--quantize", "int8")
    path = root / "run" / "model.int8.onnx"
    assert r["export"] == str(path) and r["quantize"] == "int8" and r["agreement"] >= 0.97
    import onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized
    import imagefit
    int8, exact = imagefit.load(path), imagefit.load(root / "run", backend="pytorch")
    assert int8.classes == exact.classes and int8.preprocessing == exact.preprocessing
    x = [img.numpy() for img in torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)]
    p8, p = int8.probabilities(x), exact.probabilities(x)
    assert (p8 - p).abs().max() < 0.1 and not torch.equal(p8, p)
    # the check is real: an int8 model that disagrees with the bundle is refused and nothing is written
    import imagefit.deploy.export as E
    monkeypatch.setattr(E, "INT8_AGREEMENT", 1.01)
    err = fails(capsys, "export", "--bundle", str(root / "run"), "--quantize", "int8", "--out", str(root / "q.onnx"))
    assert "int8 check failed" in err and not (root / "q.onnx").exists()
    assert "--quantize int8 is for --format onnx" in fails(capsys, "export", "--bundle", str(root / "run"),
                                                           "--format", "torchscript", "--quantize", "int8")
