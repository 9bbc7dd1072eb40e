"""The web app's own CPU per batch-1 request, without an HTTP server: raw ASGI calls into `serve.create_app` with a
predictor that does no forward pass, `--concurrency` requests at a time. Run it under py-spy to see where the time
goes (`py-spy record --threads -- python benchmarks/probes/serve_app.py`).

    python benchmarks/probes/serve_app.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from imagefit.deploy.serve import ServeOptions, create_app

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_stack import NullPredictor  # noqa: E402  (this folder)
from serve import HEADERS, multipart  # noqa: E402

# What NullPredictor copies from a real predictor: ten classes at 32 px.
MODEL = SimpleNamespace(classes=[f"class{i}" for i in range(10)], identity={"model": "null"}, tta="none",
                        preprocessing={"size": 32, "resize": "crop", "mean": [0.5] * 3, "std": [0.25] * 3})


def png_part() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return multipart(buf.getvalue(), "0.png")


async def request(app, body: bytes) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"top_k=3", "root_path": "",
             "headers": [(b"content-type", HEADERS["Content-Type"].encode()),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent


async def main(requests: int, concurrency: int) -> None:
    app, body = create_app(NullPredictor(MODEL), ServeOptions(queue=1024, tta="none")), png_part()
    async with app.router.lifespan_context(app):
        for _ in range(100):
            await request(app, body)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests // concurrency):
            await asyncio.gather(*(request(app, body) for _ in range(concurrency)))
        n = requests // concurrency * concurrency
        print(f"{n} requests, {concurrency} at a time: {1e3 * (time.process_time() - cpu) / n:.3f} CPU ms per "
              f"request (all threads), {1e3 * (time.perf_counter() - wall) / n:.3f} ms wall")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
