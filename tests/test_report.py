"""The error-analysis report: its figures and numbers, and the page loading every image in a real headless
browser (Chromium). Where no Chromium is installed the browser test is skipped, unless IMAGEFIT_REQUIRE_BROWSER is
set (CI sets it, and installs Chromium), in which case it fails."""

import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from imagefit.evaluation.metrics import calibration
from imagefit.evaluation.report import PROBES

from .conftest import TINY
from .test_train import run


def test_calibration_error_of_known_bins():
    probs = torch.tensor([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    labels = torch.tensor([0] * 9 + [1] + [0] * 3 + [1] * 7)  # 90% right at 0.9, 30% right at 0.6
    cal = calibration(probs, labels)
    assert cal["ece"] == pytest.approx(0.5 * 0 + 0.5 * 0.3)
    assert [b["n"] for b in cal["bins"]] == [10, 10]


def _chromium():
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_page_has_every_figure_and_loads_in_a_headless_browser(capsys, cifar_dir, tmp_path):
    run(capsys, "train", "--data", str(cifar_dir), *TINY[:-2], "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
        "--lr", "auto", "--out", "runs/r")
    r = run(capsys, "report", "runs/r", "--top", "5")
    folder = os.path.join("runs", "r", "report")
    names = set(os.listdir(folder))
    assert {"index.html", "curves.png", "confusion.png", "reliability.png", "lr_finder.png", "report.json"} <= names
    assert len([n for n in names if n.startswith("top-loss-")]) == 5
    assert set(r["robustness"]) == {"unaltered (no TTA)", *PROBES}
    # the calibration error, recomputed by hand from the bundle's test probabilities (15 equal-width bins)
    from imagefit.bundle import load_bundle
    from imagefit.evaluation.evaluate import bundle_scores, split_images
    bundle = load_bundle("runs/r")
    scores, labels = bundle_scores(bundle, split_images(bundle, None, "test"), batch_size=64,
                                   tta=bundle.preprocessing.tta, average=bundle.preprocessing.tta_average)
    confidence, said = scores.softmax(1).max(1)
    ece = 0.0
    for b in range(15):
        inside = (confidence > b / 15) & (confidence <= (b + 1) / 15)
        if inside.any():
            ece += inside.sum().item() / 40 * abs((said == labels)[inside].double().mean().item()
                                                  - confidence[inside].double().mean().item())
    assert r["ece"] == pytest.approx(ece, abs=1e-5)
    assert r["accuracy"] == pytest.approx((said == labels).double().mean().item())
    page = open(os.path.join(folder, "index.html")).read()
    assert page.count("<img") == 5 + 4 and "Most confused pairs" in page
    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    run_id = client.search_runs([client.get_experiment_by_name("imagefit").experiment_id])[0].info.run_id
    assert "report/index.html" in {a.path for a in client.list_artifacts(run_id, "report")}

    # the setup: what differs from the defaults, images per class per split, the link to the MLflow run
    assert "<td>optim.lr</td><td>auto</td>" not in page and "model.model</td><td>resnet</td>" in page
    train_counts = json.load(open("runs/r/metrics.json"))["data"]
    assert sum(train_counts["train"]) + sum(train_counts["val"]) == 120 and sum(train_counts["test"]) == 40
    assert f"#/experiments/{client.get_run(run_id).info.experiment_id}/runs/{run_id}" in page
    assert "mlflow ui --backend-store-uri sqlite:///" in page

    dom = _dom(os.path.abspath(folder) + "/index.html#sort=recall-desc")
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == "9", dom[-500:]
    assert json.load(open(os.path.join(folder, "report.json")))["accuracy"] == r["accuracy"]
    # sorted in the browser by the address's #sort=recall-desc: the per-class rows in falling recall
    table = re.search(r'<table class="sortable" id="per-class"[^>]*data-sorted="recall desc".*?</table>', dom, re.S)
    assert table, "the per-class table was not sorted"
    recalls = [float(x) for x in re.findall(r"<tr><td>[^<]+</td><td>[\d.]+</td><td>([\d.]+)</td>", table.group(0))]
    assert len(recalls) == 10 and recalls == sorted(recalls, reverse=True) and recalls != sorted(recalls)


def _dom(address: str) -> str:
    """The page's DOM after its scripts ran, from a real headless Chromium (skipped where none is installed,
    unless IMAGEFIT_REQUIRE_BROWSER is set)."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("IMAGEFIT_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found; install it (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium); CI runs this")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                           "--virtual-time-budget=10000", "--dump-dom", "file://" + address],
                          capture_output=True, text=True, timeout=120).stdout


def test_comparison_page_sets_runs_side_by_side_in_a_headless_browser(capsys, cifar_dir):
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--out", "runs/a")
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--seed", "1", "--cutmix", "1", "--ema", "0.9",
        "--out", "runs/b")
    r = run(capsys, "report", "runs/a", "runs/b", "--out", "cmp")
    runs = r["runs"]
    assert list(runs) == ["a", "b"]
    for name in runs:  # each run's figures are its own evaluation's
        e = run(capsys, "evaluate", "--bundle", f"runs/{name}")
        assert runs[name]["accuracy"] == pytest.approx(e["accuracy"]) and runs[name]["n"] == 40
    assert set(os.listdir("cmp")) == {"index.html", "curves.png", "comparison.json"}
    page = open("cmp/index.html").read()
    recall_b_minus_a = {c: 100 * (runs["b"]["recall"][c] - runs["a"]["recall"][c]) for c in runs["a"]["recall"]}
    for c, d in recall_b_minus_a.items():
        assert f"<td>{c}</td>" in page and f"{d:+.1f}</td>" in page
    from urllib.parse import quote
    dom = _dom(os.path.abspath("cmp/index.html") + "#sort=" + quote("b − a") + "-desc")
    assert 'data-images="1/1"' in dom
    table = re.search(r'<table class="sortable" id="per-class"[^>]*data-sorted="b − a desc".*?</table>', dom, re.S)
    assert table, "the per-class table was not sorted by the change"
    changes = [float(x) for x in re.findall(r'<td class="[a-z]*">([+-][\d.]+)</td>', table.group(0))]
    assert len(changes) == 10 and changes == sorted(changes, reverse=True)

    # nothing a user had is overwritten; runs on other classes are refused; a rerun replaces its own page
    os.makedirs("mine")
    open("mine/notes.txt", "w").write("keep")
    from imagefit.cli import main
    assert main(["report", "runs/a", "runs/b", "--out", "mine"]) == 1
    assert "holds no earlier comparison" in capsys.readouterr().err and open("mine/notes.txt").read() == "keep"
    run(capsys, "train", "--data", str(cifar_dir), *TINY, "--classes", "cat,dog", "--out", "runs/c")
    assert main(["report", "runs/a", "runs/c", "--out", "cmp2"]) == 1
    assert "same classes" in capsys.readouterr().err and not os.path.exists("cmp2")
    assert run(capsys, "report", "runs/b", "runs/a", "--out", "cmp")["runs"]["a"] == runs["a"]
