"""Load test of `imagefit serve` on loopback: requests/s and p50/p99 latency of batch-1 requests, ONNX Runtime vs
eager PyTorch, beside the model's offline batched images/s, and the server's peak resident memory through the load
and a bad-input run.

    python benchmarks/serve.py --data DIR --bundle fast=RUN1 --bundle resnet18=RUN2 [--clients 1,8,32]
        [--requests 600] [--tta none]

Each bundle needs its ONNX export beside it (`imagefit export --bundle RUN`). For every bundle and backend a fresh
server process starts (`--threads` inference threads), answers 30 warm-up requests, then each client count runs
`--requests` requests from that many client threads (stdlib http.client with keep-alive and a prebuilt body, to
spend as little of the 2 cores as possible on the client side; the clients still share the machine with the
server, which the figures include). The images are real test images of DIR, PNG-encoded. Offline images/s: the
same predictor in this process, batches of 256, same threads and TTA. Prints a table; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import torch


def _png_bodies(data: str, n: int, raw: bool = False) -> list[bytes]:
    """`n` real test images as PNG, each in a one-file multipart body (or, with `raw`, the PNG bytes alone)."""
    from PIL import Image

    from imagefit.config import DataConfig
    from imagefit.data.sources import load_test_split
    test = load_test_split(DataConfig(data=data))
    bodies = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(test.images[i * 37 % len(test)].permute(1, 2, 0).numpy()).save(buf, format="PNG")
        bodies.append(buf.getvalue() if raw else multipart(buf.getvalue(), f"{i}.png"))
    return bodies


HEADERS = {"Content-Type": "multipart/form-data; boundary=imagefitbench"}


def multipart(content: bytes, name: str = "x.png") -> bytes:
    """A multipart body (boundary of HEADERS) holding one file in the field 'files'."""
    return (f"--imagefitbench\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + content + b"\r\n--imagefitbench--\r\n"


def _client(port: int, bodies: list[bytes], count: int, latencies: list, errors: list, headers=None) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for i in range(count):
        start = time.perf_counter()
        conn.request("POST", "/predict?top_k=3", body=bodies[i % len(bodies)], headers=headers or HEADERS)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        if response.status != 200:
            errors.append(response.status)
    conn.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(port: int, bodies: list[bytes], clients: int, requests: int, server_pid: int | None = None,
          headers: dict | None = None) -> dict:
    """Also the CPU each side spent per request: the clients share the cores with the server, and the two figures
    say how much of the machine each took (server_cpu_ms_per_request is the server's own cost of a request)."""
    latencies, errors = [], []
    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    threads = [threading.Thread(target=_client, args=(port, bodies, n, latencies, errors, headers)) for n in per]
    server_cpu, client_cpu = _tree_cpu_s(server_pid) if server_pid else 0.0, _cpu_s(os.getpid())
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    row = {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": round(seconds, 2),
           "requests_per_s": round(len(latencies) / seconds, 1), "p50_ms": round(1000 * q[49], 2),
           "p99_ms": round(1000 * q[98], 2),
           "client_cpu_ms_per_request": round(1000 * (_cpu_s(os.getpid()) - client_cpu) / len(latencies), 3)}
    if server_pid:
        row["server_cpu_ms_per_request"] = round(1000 * (_tree_cpu_s(server_pid) - server_cpu) / len(latencies), 3)
    return row


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of the server and its worker processes."""
    total = 0.0
    for p in _tree(pid):
        try:
            total += _cpu_s(p)
        except OSError:
            pass
    return total


def _tree(pid: int) -> list[int]:
    """A process and all its descendants (--workers processes; LitServe's API server, worker and queue manager)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _status_mb(pid: int, key: str) -> float:
    """A memory figure of /proc/PID/status (VmRSS: resident now; VmHWM: its peak), in MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM")


def _bad_inputs(port: int) -> dict:
    """The bad uploads of the tests, once each; returns the status each got."""
    def post(body: bytes, kind: str = HEADERS["Content-Type"]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
            return conn.getresponse().status
        except (BrokenPipeError, ConnectionResetError):
            return -1  # the server closed the connection after answering 413 mid-upload
        finally:
            conn.close()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_serve import huge_png, png
    return {"not an image": post(multipart(b"hello")), "corrupt": post(multipart(png()[:60])), "empty": post(b""),
            "bomb": post(multipart(huge_png())), "50 MB": post(multipart(b"\0" * 50_000_000)),
            "wrong type": post(b"{}", "application/json")}


def throughput(predictor, tta: str, batch: int = 256, images: int = 2048, warmup: int = 1) -> tuple[float, float]:
    """Images/s and CPU ms per image of `predictor` in this process, on random images in batches of `batch`."""
    size = predictor.preprocessing.size
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    for _ in range(warmup):
        predictor.probabilities(x, tta)
    n = max(1, images // batch)
    start, cpu = time.perf_counter(), _cpu_s(os.getpid())
    for _ in range(n):
        predictor.probabilities(x, tta)
    return n * batch / (time.perf_counter() - start), 1000 * (_cpu_s(os.getpid()) - cpu) / (n * batch)


def _offline(bundle: str, backend: str, threads: int, tta: str) -> tuple[float, float]:
    from imagefit.deploy.inference import load_predictor
    return throughput(load_predictor(bundle, backend, threads), tta)


def _rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS")


def multipart_many(files: list[bytes]) -> bytes:
    parts = [(f"--imagefitbench\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.png\"\r\n"
              f"Content-Type: image/png\r\n\r\n").encode() + f + b"\r\n" for i, f in enumerate(files)]
    return b"".join(parts) + b"--imagefitbench--\r\n"


def _adversarial(port: int, pid: int, requests: int = 60, side: int = 4900) -> dict:
    """Issue 26's bursts: `requests` concurrent requests of four side×side PNGs (just under the 25-megapixel limit,
    ~25 KB each), then 63 silent sockets while /health and a small request are timed. RSS before, peak, after."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, format="PNG", optimize=True)
    body = multipart_many([buf.getvalue()] * 4)
    statuses, lock = [], threading.Lock()

    def one():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            conn.request("POST", "/predict", body=body, headers=HEADERS)
            r = conn.getresponse()
            r.read()
            status = r.status
        except OSError as e:
            status = type(e).__name__
        finally:
            conn.close()
        with lock:
            statuses.append(status)

    row = {"png_bytes": len(buf.getvalue()), "requests": requests, "rss_before_mb": round(_rss_mb(pid), 1)}
    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row["burst_s"] = round(time.perf_counter() - start, 1)
    row["statuses"] = {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)}
    row["rss_peak_mb"] = round(_peak_rss_mb(pid), 1)
    time.sleep(2)
    row["rss_after_mb"] = round(_rss_mb(pid), 1)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(63)]
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    row["health_with_63_silent_sockets"] = conn.getresponse().status
    row["health_ms"] = round(1000 * (time.perf_counter() - t), 1)
    conn.close()
    for s in idle:
        s.close()
    return row


def _start(cmd: list[str], port: int, health: str = "/health") -> subprocess.Popen:
    """A server in its own process group (`_stop` ends the group: LitServe's worker processes outlive a terminated
    parent and keep polling, which slowed every later run by up to a core)."""
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(1200):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", health)
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.1)
    _stop(server)
    raise RuntimeError(f"{cmd[:4]} did not come up")


def _stop(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        pass
    try:  # whatever of the group is left
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _profile(folder: str | None, label: str, pid: int) -> list[subprocess.Popen]:
    """py-spy on every process of a server's tree for the next few seconds (the row being timed), one speedscope file
    each; `--idle` left off, so the profile holds only CPU work. Costs the profiled server some throughput: compare
    profiled rows with each other only."""
    if not folder:
        return []
    Path(folder).mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return [subprocess.Popen([str(spy), "record", "--pid", str(p), "--duration", "6", "--rate", "200", "--native",
                              "--format", "raw", "--output", str(Path(folder) / f"{label}-{p}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in _tree(pid)]


def _peers(args) -> list[dict]:
    """imagefit serve against LitServe on the same ONNX model and preprocessing (benchmarks/peers/litserve_server.py),
    both running at once, the same load generator alternating between them at every row: batch-1 and 16-image
    requests at each client count. imagefit takes multipart uploads, LitServe its idiomatic JSON with base64 images."""
    import base64
    pngs = _png_bodies(args.data, 64, raw=True)
    peer = Path(__file__).resolve().parent / "peers" / "litserve_server.py"
    rows = []
    for name, run in (b.split("=", 1) for b in args.bundle):
        ours_port, peer_port = _free_port(), _free_port()
        ours = _start([sys.executable, "-m", "imagefit", "serve", "--bundle", run, "--port", str(ours_port),
                       "--backend", "onnx", "--threads", str(args.threads), "--tta", "none", "--queue", "1024",
                       "--max-files", "16", *args.ours_options.split()], ours_port)
        theirs = _start([sys.executable, str(peer), run, str(peer_port), "--threads", str(args.threads), "--tta", "none",
                         *args.peer_options.split()], peer_port)
        try:
            for images in map(int, args.images.split(",")):
                groups = [[pngs[(i * images + j) % len(pngs)] for j in range(images)] for i in range(16)]
                ours_bodies = [multipart_many(g) for g in groups]
                peer_bodies = [json.dumps({"images": [base64.b64encode(b).decode() for b in g]}).encode()
                               for g in groups]
                requests = args.requests if images == 1 else max(32, args.requests // 8)
                if args.peer_requests:
                    requests = args.peer_requests
                # Warm-up under concurrency: ONNX Runtime plans each new batch shape on first sight, which put 150-190 ms
                # into the p99 of a first timed run after a sequential warm-up (28-38 ms from the second run on).
                for port, bodies, headers, proc, other in (
                        (ours_port, ours_bodies, None, ours, theirs),
                        (peer_port, peer_bodies, {"Content-Type": "application/json"}, theirs, ours)):
                    os.killpg(other.pid, signal.SIGSTOP)
                    os.killpg(proc.pid, signal.SIGCONT)
                    _load(port, bodies, 8, 200 if images == 1 else 48, headers=headers)
                for clients, round_ in ((c, k) for c in map(int, args.clients.split(","))
                                        for k in range(args.rounds)):
                    for server, port, bodies, headers, proc, other in (
                            ("imagefit", ours_port, ours_bodies, None, ours, theirs),
                            ("litserve", peer_port, peer_bodies, {"Content-Type": "application/json"}, theirs, ours)):
                        # The server not being measured is frozen (SIGSTOP on its process group): an idle LitServe
                        # polls its queues, ~6% of a core per process, which would land in the other server's tail.
                        os.killpg(other.pid, signal.SIGSTOP)
                        os.killpg(proc.pid, signal.SIGCONT)
                        spies = _profile(args.profile, f"{name}-{images}img-{clients}c-r{round_}-{server}", proc.pid)
                        r = _load(port, bodies, clients, requests, server_pid=proc.pid, headers=headers)
                        for spy in spies:
                            spy.wait(timeout=60)
                        r.update(bundle=name, server=server, images_per_request=images, round=round_,
                                 images_per_s=round(r["requests_per_s"] * images, 1),
                                 rss_mb=round(sum(_rss_mb(p) for p in _tree(proc.pid)), 1))
                        rows.append(r)
                        print(json.dumps(r), flush=True)
        finally:
            for proc in (ours, theirs):
                os.killpg(proc.pid, signal.SIGCONT)
                _stop(proc)
    print(f"\nimagefit serve against LitServe ({args.peer_options or 'defaults'}), ONNX Runtime, "
          f"{args.threads} threads, loopback")
    for r in rows:
        print(f"{r['bundle']:>9} {r['images_per_request']:>2} img/request {r['clients']:>3} clients {r['server']:>9}: "
              f"{r['images_per_s']:8.1f} images/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
              f"RSS {r['rss_mb']:.0f} MB")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--bundle", action="append", required=True, metavar="NAME=RUN")
    p.add_argument("--backends", default="onnx,pytorch")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tta", default="none")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--peers", choices=("litserve",), help="instead of the load test: imagefit against a peer server")
    p.add_argument("--peer-options", default="--max-batch 32 --batch-timeout 0.002",
                   help="options of benchmarks/peers/litserve_server.py")
    p.add_argument("--ours-options", default="", help="with --peers: extra options of imagefit serve")
    p.add_argument("--images", default="1,16", help="with --peers: images per request, comma-separated")
    p.add_argument("--rounds", type=int, default=1, help="with --peers: times each row is repeated (alternating)")
    p.add_argument("--peer-requests", type=int, help="with --peers: requests per row (default: --requests for "
                   "batch-1 rows, an eighth of it for larger requests)")
    p.add_argument("--profile", metavar="DIR", help="with --peers: py-spy each server's processes during each row "
                   "(folded stacks in DIR)")
    p.add_argument("--workers", default="1", help="server processes, comma-separated values to compare (e.g. 1,2)")
    p.add_argument("--adversarial", action="store_true", help="instead of the load test: issue 26's bursts of large "
                   "PNGs and silent sockets against each bundle's server (first backend), RSS before/peak/after")
    args = p.parse_args()
    if args.peers:
        rows = _peers(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"serve-peers-{date.today()}.json"
        path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        print(f"runs: {path}")
        return
    if args.adversarial:
        args.backends = args.backends.split(",")[0]
    bodies = _png_bodies(args.data, 64)
    rows = []
    for name, run, backend, workers in ((*b.split("=", 1), k, int(w)) for b in args.bundle
                                        for k in args.backends.split(",") for w in args.workers.split(",")):
        port = _free_port()
        server = _start([sys.executable, "-m", "imagefit", "serve", "--bundle", run, "--port", str(port),
                         "--backend", backend, "--threads", str(max(1, args.threads // workers)), "--tta", args.tta,
                         "--queue", "1024", "--workers", str(workers)], port)
        try:
            if args.adversarial:
                r = {"bundle": name, "backend": backend, **_adversarial(port, server.pid)}
                rows.append(r)
                print(json.dumps(r), flush=True)
                continue
            _load(port, bodies, 1, 30)
            offline, offline_cpu = _offline(run, backend, args.threads, args.tta)
            for clients in map(int, args.clients.split(",")):
                r = {"bundle": name, "backend": backend, "workers": workers,
                     **_load(port, bodies, clients, args.requests, server.pid),
                     "offline_images_per_s": round(offline, 1), "offline_cpu_ms_per_image": round(offline_cpu, 3)}
                r["share_of_offline"] = round(r["requests_per_s"] / offline, 3)
                r["server_peak_rss_mb"] = round(sum(_peak_rss_mb(p) for p in _tree(server.pid)), 1)
                rows.append(r)
                print(json.dumps(r), flush=True)
            bad = _bad_inputs(port)
            rows[-1]["bad_inputs"] = bad
            rows[-1]["server_peak_rss_mb_after_bad_inputs"] = round(_peak_rss_mb(server.pid), 1)
            print(json.dumps({"bad_inputs": bad, "peak_rss_mb": rows[-1]["server_peak_rss_mb_after_bad_inputs"]}),
                  flush=True)
        finally:
            _stop(server)
    print(f"\nbatch-1 requests on loopback, {args.threads} inference threads, TTA {args.tta}")
    for r in rows if not args.adversarial else []:
        print(f"{r['bundle']:>10} {r['backend']:>8} {r['workers']} worker(s) {r['clients']:>3} clients: {r['requests_per_s']:7.1f} req/s  "
              f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  ({100 * r['share_of_offline']:.0f}% of offline "
              f"{r['offline_images_per_s']:.0f} img/s)  CPU ms: server {r['server_cpu_ms_per_request']:.2f}/request, "
              f"client {r['client_cpu_ms_per_request']:.2f}/request, offline {r['offline_cpu_ms_per_image']:.2f}/image"
              f"  peak RSS {r['server_peak_rss_mb']:.0f} MB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve{'-adversarial' if args.adversarial else ''}-{date.today()}.json"
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"runs: {path}")


if __name__ == "__main__":
    main()
