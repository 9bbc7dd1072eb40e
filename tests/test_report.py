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

    browser = _chromium()
    if browser is None:
        if os.environ.get("IMAGEFIT_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found; install it (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium); CI runs this")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                          "--virtual-time-budget=10000", "--dump-dom", "file://" + os.path.abspath(folder) + "/index.html"],
                         capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) == "9", dom[-500:]
    assert json.load(open(os.path.join(folder, "report.json")))["accuracy"] == r["accuracy"]
