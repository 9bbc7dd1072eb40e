"""`imagefit serve`: the web app and JSON API for a bundle (`serve.run_server`)."""

from __future__ import annotations

from ..config import TTA_MODES

NAME = "serve"


def add_arguments(sub) -> None:
    p = sub.add_parser("serve", help="a web app and JSON API for a bundle (FastAPI under uvicorn)")
    p.add_argument("--bundle", required=True, help="run folder, bundle.safetensors or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: 8000; 0: any free port (--json says which)")
    p.add_argument("--backend", choices=("auto", "onnx", "pytorch"), default="auto", help="default: auto")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the bundle's)")
    p.add_argument("--max-batch", type=int, default=64, help="largest micro-batch of queued images (default: 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a micro-batch waits to fill "
                                                                  "(default: 2)")
    p.add_argument("--queue", type=int, default=256, help="images waiting at most; beyond it requests get 503 "
                                                          "(default: 256)")
    p.add_argument("--max-files", type=int, default=16, help="images per request at most (default: 16)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="request body size limit (default: 10)")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image (width × height) decoded "
                                                                      "(default: 25000000)")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    p.add_argument("--request-timeout", type=float, default=10.0, help="seconds to receive a request's headers, "
                   "then its body; 408 after (default: 10)")
    p.add_argument("--decode-pixels", type=int, default=64_000_000, help="pixels of large images decoded at once "
                   "over all requests; more wait, then get 503 (default: 64000000)")
    p.add_argument("--max-requests", type=int, default=64, help="requests handled at once (/health aside); beyond "
                   "it JSON 503 with Retry-After (default: 64)")
    p.add_argument("--workers", type=int, default=1, help="server processes sharing the port, each with its own "
                   "model and its share of the cores (default: 1)")
    p.add_argument("--log-level", choices=("warning", "info", "debug"), default="warning",
                   help="info: a line per request (method, path, status, ms, images) on stderr (default: warning)")
    p.add_argument("--json", action="store_true", help="print the address as one JSON object once listening (url, "
                                                       "page, docs, pid); then serve")


def run(args) -> dict:
    from ..deploy.serve import ServeOptions, run_server
    opts = ServeOptions(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                        max_files=args.max_files, max_upload_bytes=int(args.max_upload_mb * 1e6),
                        max_pixels=args.max_pixels, tta=args.tta, request_timeout_s=args.request_timeout,
                        max_requests=args.max_requests, decode_pixels=args.decode_pixels)
    run_server(args.bundle, args.host, args.port, opts, backend=args.backend, threads=args.threads,
               log_level=args.log_level, as_json=args.json, workers=args.workers)
    args.json = False  # the address was the JSON line; nothing more when the server stops
    return {}
