"""Deployment: ONNX/TorchScript export with its parity check, batch prediction on either backend, and the web app
as a real uvicorn process: the API, every kind of bad upload, micro-batching and overload, the OpenAPI schema under
schemathesis, and the page in a real headless Chromium (a screenshot is kept in test-artifacts/)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from imagefit.cli import main

from .conftest import CLASSES, class_images, serving, tiny_bundle
from .test_report import _chromium
from .test_train import fails, run

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny bundle with its ONNX export, served by `imagefit serve` in its own process."""
    root = tmp_path_factory.mktemp("serve")
    data, bundle = tiny_bundle(root, export=True)
    with serving(bundle, "--max-files", "4", "--max-upload-mb", "2", "--max-pixels", "4000000", "--threads", "1",
                 env={"IMAGEFIT_CACHE": str(root / "cache")}) as (url, server):
        yield {"url": url, "root": root, "data": data, "pid": server.pid}


def png(index: int = 0) -> bytes:
    x, _ = class_images(1, 10, seed=5)
    buf = io.BytesIO()
    Image.fromarray(x[index]).save(buf, format="PNG")
    return buf.getvalue()


def huge_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring width × height pixels, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_predict_files_and_folders_as_csv(capsys, served):
    os.makedirs("imgs/sub")
    for i in range(3):
        Path(f"imgs/sub/{i}.png").write_bytes(png(i))
    Path("one.png").write_bytes(png(4))
    r = run(capsys, "predict", "--bundle", str(served["root"] / "run"), "imgs", "one.png", "--top-k", "2")
    assert r["n"] == 4 and r["backend"] == "onnxruntime" and len(r["predictions"][0]["top"]) == 2
    assert main(["predict", "--bundle", str(served["root"] / "run"), "imgs", "--format", "csv", "--backend",
                 "pytorch"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["file", "class1", "probability1"] and len(rows) == 4
    assert "no bundle at nowhere" in fails(capsys, "predict", "--bundle", "nowhere", "one.png")


def test_api_answers(served):
    url = served["url"]
    model = httpx.get(url + "/model").json()
    assert model["classes"] == CLASSES and model["backend"] == "onnxruntime" and model["identity"]["sha256"]
    # small images are decoded on the event loop, one over serve.INLINE_PIXELS in a worker thread: both must match
    buf = io.BytesIO()
    Image.open(io.BytesIO(png(3))).resize((300, 200)).save(buf, format="PNG")
    photo = buf.getvalue()
    blobs = [png(0), png(1), photo]
    files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    r = httpx.post(url + "/predict?top_k=3", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["file"] for p in preds] == ["0.png", "1.png", "2.png"]
    assert all(len(p["top"]) == 3 and p["top"][0]["class"] in CLASSES for p in preds)
    # the server gives what `imagefit predict` gives for the same bytes
    from imagefit.preprocessing import load_image
    from imagefit.deploy.inference import load_predictor
    p = load_predictor(served["root"] / "run")
    x = torch.from_numpy(np.stack([load_image(b, 32) for b in blobs])).permute(0, 3, 1, 2)
    expected = p.probabilities(x).max(1).values
    assert torch.allclose(torch.tensor([q["top"][0]["probability"] for q in preds]), expected, atol=1e-5)
    assert "/predict" in httpx.get(url + "/openapi.json").json()["paths"]


def test_bad_uploads_get_json_4xx_and_the_server_keeps_serving(served):
    url = served["url"]
    good = ("files", ("ok.png", png(), "image/png"))
    cases = {
        "not an image": ([("files", ("a.txt", b"hello, not pixels", "text/plain"))], {}, 415),
        "corrupt image": ([("files", ("c.png", png()[:60], "image/png"))], {}, 400),
        "empty file": ([("files", ("e.png", b"", "image/png"))], {}, 400),
        "decompression bomb": ([("files", ("big.png", huge_png(), "image/png"))], {}, 413),
        "too many files": ([good] * 5, {}, 413),
        "50 MB upload": ([("files", ("huge.png", b"\0" * 50_000_000, "image/png"))], {}, 413),
        "no files field": ([("other", ("x.png", png(), "image/png"))], {}, 400),
        "top_k out of range": ([good], {"top_k": 0}, 422),
    }
    for name, (files, params, status) in cases.items():
        r = httpx.post(url + "/predict", files=files, params=params, timeout=60)
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert body["status"] == status and len(body["error"]) > 10, (name, body)
    wrong_type = httpx.post(url + "/predict", json={"files": ["x"]})
    assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.json()["error"]
    empty = httpx.post(url + "/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= empty.status_code < 500
    assert httpx.post(url + "/predict", files=[good]).status_code == 200  # still serving
    # a decompression bomb inside a batch is that file's 413; the good file beside it is answered
    mixed = httpx.post(url + "/predict", files=[good, ("files", ("big.png", huge_png(), "image/png"))]).json()
    assert "top" in mixed["predictions"][0] and mixed["predictions"][1]["status"] == 413
    assert _raw(url, _lying_body(declared=5000, sent=200)).startswith(b"HTTP/1.1 408")  # waits for bytes never sent
    assert _raw(url, _lying_body(declared=100, sent=2000))[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 413")
    assert httpx.get(url + "/health").status_code == 200
    rss_kb = int(next(line.split()[1] for line in open(f"/proc/{served['pid']}/status") if line.startswith("VmHWM")))
    assert rss_kb < 1_000_000, f"server peaked at {rss_kb / 1e3:.0f} MB"


def _lying_body(declared: int, sent: int) -> bytes:
    """A multipart POST whose Content-Length says `declared` bytes and that carries `sent`."""
    body = (b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + png())[:sent]
    body += b"\0" * max(0, sent - len(body))
    return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: %d\r\n\r\n" % declared) + body


def _raw(url: str, request: bytes, timeout: float = 20) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        return s.recv(65536)


def test_a_thousand_connections_are_answered_and_bounded(served):
    """1,000 concurrent connections: each gets an answer (200, or a JSON 503 with Retry-After), none waits
    unboundedly, and the server is still healthy after."""
    import concurrent.futures
    url = served["url"]
    body = [("files", ("ok.png", png(), "image/png"))]

    def one(_):
        try:
            r = httpx.post(url + "/predict", files=body, timeout=60)
            return r.status_code, r.headers.get("retry-after"), r.json().get("status", 200)
        except httpx.HTTPError as e:
            return type(e).__name__, None, None
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(one, range(1000)))
    statuses = {a[0] for a in answers}
    assert statuses <= {200, 503}, statuses
    assert all(a[1] is not None and a[2] == 503 for a in answers if a[0] == 503)
    assert httpx.get(url + "/health").status_code == 200


class SlowPredictor:
    """Records each forward's batch size; takes 50 ms per call."""
    classes = ["a", "b"]

    def __init__(self):
        self.sizes = []

    def probabilities(self, images, tta=None):
        self.sizes.append(len(images))
        time.sleep(0.05)
        return torch.full((len(images), 2), 0.5)


def test_one_bad_file_does_not_fail_the_others(served):
    """Each file gets its predictions or its own error; 4xx only when no file can be used. Names are base names."""
    url = served["url"]
    files = [("files", ("../../etc/ok.png", png(0), "image/png")), ("files", ("broken.png", png()[:60], "image/png")),
             ("files", ("y" * 300 + ".png", b"", "image/png")), ("files", ("two.png", png(1), "image/png"))]
    r = httpx.post(url + "/predict?top_k=2", files=files)
    assert r.status_code == 200, r.text
    p = r.json()["predictions"]
    assert [q["file"] for q in p][:2] == ["ok.png", "broken.png"] and len(p[2]["file"]) <= 120
    assert len(p[0]["top"]) == 2 and len(p[3]["top"]) == 2
    assert p[1]["status"] == 400 and "corrupt or truncated" in p[1]["error"]
    assert p[2]["status"] == 400 and "is empty" in p[2]["error"]
    alone = httpx.post(url + "/predict?top_k=2", files=[files[0]]).json()["predictions"][0]
    assert alone["top"] == p[0]["top"]  # a bad neighbour changes no answer
    nothing = httpx.post(url + "/predict", files=files[1:3])
    assert nothing.status_code == 400 and nothing.json()["status"] == 400
    long_name = httpx.post(url + "/predict", files=[("files", ("x" * 10_000 + ".png", png(0), "image/png"))])
    assert long_name.status_code in (200, 400) and long_name.json().get("status", 200) in (200, 400)
    assert httpx.get(url + "/health").status_code == 200


def test_docs_load_from_the_package_and_every_endpoint_has_a_schema(served):
    url = served["url"]
    docs = httpx.get(url + "/docs").text + httpx.get(url + "/redoc").text
    assert "cdn" not in docs.lower() and "https://" not in docs  # nothing fetched from the network
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert asset in docs
        r = httpx.get(url + "/static-offline-docs/" + asset)
        assert r.status_code == 200 and len(r.content) > 100_000, asset
    paths = httpx.get(url + "/openapi.json").json()["paths"]
    for path, method in (("/predict", "post"), ("/health", "get"), ("/model", "get")):
        schema = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema != {} and "$ref" in schema, (path, schema)


def test_micro_batching_merges_concurrent_requests_and_bounds_the_queue():
    from imagefit.deploy.serve import MicroBatcher, Overloaded, ServeOptions

    async def scenario():
        slow = SlowPredictor()
        batcher = MicroBatcher(slow, ServeOptions(max_batch=32, max_wait_ms=1, queue=8, max_files=1))
        await batcher.start()
        one = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
        results = await asyncio.gather(*(batcher.submit(one) for _ in range(8)))
        assert len(results) == 8 and sum(slow.sizes) == 8 and max(slow.sizes) > 1  # merged while busy
        waiting = [asyncio.create_task(batcher.submit(one)) for _ in range(8)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):  # 8 images queued: a ninth is refused at once
            await batcher.submit(one)
        await asyncio.gather(*waiting)
        await batcher.stop()

    asyncio.run(scenario())


def test_openapi_schema_under_schemathesis_finds_no_server_error(served):
    st = Path(sys.executable).with_name("st")
    done = subprocess.run([str(st), "run", served["url"] + "/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "25", "--seed", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_page_in_a_headless_browser(served):
    browser = _chromium()
    if browser is None:
        if os.environ.get("IMAGEFIT_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found; install it (apt-get install chromium)")
        pytest.skip("no Chromium installed (apt-get install chromium); CI runs this")
    from playwright.sync_api import sync_playwright
    Path("cat.png").write_bytes(png(3))
    Path("dog.png").write_bytes(png(5))
    Path("broken.png").write_bytes(png()[:60])
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        page = chrome.new_page()
        page.goto(served["url"] + "/")
        page.wait_for_function("document.getElementById('meta').textContent.includes('classes')")
        page.set_input_files("#files", ["cat.png", "broken.png", "dog.png"])  # two good images and a corrupt one
        page.wait_for_selector(".result .top-class", timeout=30_000)
        top = page.text_content(".result .top-class")
        assert top in CLASSES and page.locator(".result .row").count() == 2 * 5
        assert page.locator(".result .error").count() == 1 and "corrupt" in page.text_content(".result .error")
        assert page.locator(".result .track").count() == 10 and page.locator(".result .pct").count() == 10
        assert "2 classified, 1 could not be used" in page.text_content("#status")
        meta = page.text_content("#meta")
        assert "test accuracy" in meta and "%" in meta and "airplane" in meta  # the model, its classes, accuracy
        # a pasted image (Ctrl+V) is classified too, and shows first; earlier results stay
        page.evaluate("""async () => {
            const canvas = document.createElement('canvas'); canvas.width = canvas.height = 32;
            canvas.getContext('2d').fillRect(0, 0, 16, 16);
            const blob = await new Promise(r => canvas.toBlob(r, 'image/png'));
            const dt = new DataTransfer(); dt.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
            document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt}));
        }""")
        page.wait_for_function("document.querySelectorAll('.result').length === 4")
        assert page.locator(".result .file").first.text_content() == "pasted.png"
        assert page.get_attribute("#files", "aria-label") and page.get_attribute("#drop", "tabindex") == "0"
        page.keyboard.press("Tab")  # the drop zone takes keyboard focus first
        assert page.evaluate("document.activeElement.id") in ("drop", "files")
        page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        page.click("#clear")
        assert page.locator(".result").count() == 0
        page.goto(served["url"] + "/docs")  # Swagger UI from the package: it renders with no network
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        assert "/predict" in page.text_content("body")
        page.screenshot(path=str(ARTIFACTS / "serve-docs.png"))
        chrome.close()
    expected = httpx.post(served["url"] + "/predict", files=[("files", ("cat.png", png(3), "image/png"))])
    assert expected.json()["predictions"][0]["top"][0]["class"] == top


def test_serve_json_names_its_address_and_logs_each_request(served):
    """`serve --port 0 --json` picks a free port and says which, as JSON, once it accepts connections; at --log-level
    info every request is one line on stderr."""
    env = {**os.environ, "IMAGEFIT_CACHE": str(served["root"] / "cache"), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "imagefit", "serve", "--bundle", str(served["root"] / "run"),
                               "--port", "0", "--json", "--log-level", "info", "--threads", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = json.loads(server.stdout.readline())
        assert address["docs"] == address["url"] + "/docs" and address["pid"] == server.pid
        for _ in range(100):
            try:
                if httpx.get(address["url"] + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(address["url"] + "/predict", files=[("files", ("a.png", png(0), "image/png")),
                                                           ("files", ("b.png", png(1), "image/png"))])
        assert r.status_code == 200
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert any(line.startswith("POST /predict 200 ") and line.endswith(" ms 2 images") for line in err.splitlines()), err
    assert any(line.startswith("GET /health 200 ") for line in err.splitlines())


def test_workers_share_the_port_and_a_dead_one_is_replaced(served):
    env = {**os.environ, "IMAGEFIT_CACHE": str(served["root"] / "cache")}
    server = subprocess.Popen([sys.executable, "-m", "imagefit", "serve", "--bundle", str(served["root"] / "run"),
                               "--port", "0", "--json", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = json.loads(server.stdout.readline())["url"]

        def pids(n: int) -> set:
            seen = set()
            for _ in range(n):
                try:
                    seen.add(httpx.get(url + "/health", timeout=5).json()["pid"])  # a new connection each time
                except httpx.HTTPError:
                    time.sleep(0.2)
            return seen
        deadline = time.time() + 60
        workers = set()
        while len(workers) < 2 and time.time() < deadline:
            workers |= pids(20)
        assert len(workers) == 2 and server.pid not in workers  # two processes answer, neither the supervisor
        os.kill(next(iter(workers)), 9)
        seen = set()
        while time.time() < deadline + 30 and not (seen - workers):
            seen |= pids(10)
        assert seen - workers, "the killed worker was not replaced"
        r = httpx.post(url + "/predict", files=[("files", ("a.png", png(0), "image/png"))], timeout=30)
        assert r.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=60)
