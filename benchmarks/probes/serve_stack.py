"""Where a batch-1 request's time goes in `imagefit serve`: the same load as benchmarks/serve.py against servers
that differ in one part each, started one after another in this run so their ratios compare.

    python benchmarks/probes/serve_stack.py --data DIR --bundle RUN [--clients 8] [--requests 800]

Stacks: uvicorn's pure-Python HTTP parser and asyncio loop (h11) against httptools + uvloop (uvicorn[standard]).
Models: `null` (uniform probabilities, no forward pass, everything else the same: HTTP, multipart parsing,
decoding, micro-batching, JSON: the ceiling the server's own Python puts on requests/s for any model); `onnx`
(ONNX Runtime as the server runs it: its pool threads do not busy-wait between runs); `onnx-spin` (they do: ONNX
Runtime's default); `eager` (PyTorch).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class NullPredictor:
    """The real predictor's classes and preprocessing, uniform probabilities without a forward pass."""

    def __init__(self, real):
        self.classes, self.preprocessing, self.identity = real.classes, real.preprocessing, real.identity
        self.backend, self.tta = "null", real.tta

    def probabilities(self, images, tta=None):
        return torch.full((len(images), len(self.classes)), 1 / len(self.classes))

    def describe(self):
        return {"classes": self.classes, "backend": self.backend}


def serve(bundle: str, port: int, http: str, loop: str, model: str, threads: int) -> None:
    import uvicorn

    from imagefit.deploy.inference import load_predictor
    from imagefit.deploy.serve import ServeOptions, create_app
    predictor = load_predictor(bundle, "pytorch" if model == "eager" else "onnx", threads, spin=model == "onnx-spin")
    if model == "null":
        predictor = NullPredictor(predictor)
    app = create_app(predictor, ServeOptions(queue=1024, tta="none"))
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, loop=loop, log_level="warning")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", required=True, help="a run folder with its ONNX export")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default="null,onnx,onnx-spin,eager")
    p.add_argument("--stacks", default="h11+asyncio,httptools+uvloop")
    p.add_argument("--serve", nargs=4, metavar=("PORT", "HTTP", "LOOP", "MODEL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        port, http, loop, model = args.serve
        return serve(args.bundle, int(port), http, loop, model, args.threads)
    from serve import _load, _png_bodies
    bodies = _png_bodies(args.data, 64)
    for http, loop in (stack.split("+") for stack in args.stacks.split(",")):
        for model in args.models.split(","):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = subprocess.Popen([sys.executable, __file__, "--data", args.data, "--bundle", args.bundle,
                                       "--threads", str(args.threads), "--serve", str(port), http, loop, model])
            try:
                for _ in range(600):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                _load(port, bodies, 1, 30)
                r = _load(port, bodies, args.clients, args.requests, server.pid)
                print(f"{http:>9} + {loop:<7} {model:>9}: {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms"
                      f"  p99 {r['p99_ms']:6.1f} ms  ({args.clients} clients, {r['requests']} requests, "
                      f"{r['errors']} errors; CPU ms per request: server {r['server_cpu_ms_per_request']:.2f}, "
                      f"client {r['client_cpu_ms_per_request']:.2f})", flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
