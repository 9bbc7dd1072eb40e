"""The web app: a page to drop images on, and a JSON API, for one bundle, on a CPU (FastAPI under uvicorn).

    GET  /          the page (static/index.html): pick or drop images, see the top classes as bars
    POST /predict   multipart field `files` (one or more images) → top-k classes per image
    GET  /health    liveness and queue depth
    GET  /model     classes, preprocessing, TTA, metrics, backend and the bundle's SHA-256
    GET  /docs      the OpenAPI page (FastAPI's)

Micro-batching (`MicroBatcher`): decoded images from concurrent requests wait in one queue; a single worker takes
everything queued (up to `max_batch` images, waiting at most `max_wait_ms` for more) and runs one forward pass in
its own thread, so the event loop keeps accepting requests meanwhile. The queue is bounded in images: beyond it a
request gets 503 at once rather than memory; `Admission` bounds the requests in the app (JSON 503 with Retry-After,
/health exempt), and a connection gets `request_timeout_s` to send its headers and then its body (408). Request
bodies are bounded by `BodyLimit` (413, counted as the bytes
arrive, whether or not the client sent Content-Length), images by their declared pixel count before decoding
(413), files per request by `max_files` (413). Every error is JSON: {"error": "...", "status": N}.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from contextlib import asynccontextmanager
from importlib import resources

import torch
from fastapi import HTTPException, Query, Request  # FastAPI reads the handlers' annotations by name
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import ImagefitError
from .inference import top_classes


@dataclass
class ServeOptions:
    max_batch: int = 64  # 32 cost `fast` 15% of its images/s with 16-image requests (RESULTS, LitServe)
    max_wait_ms: float = 2.0
    queue: int = 256  # images waiting at most
    max_files: int = 16
    max_upload_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    tta: str | None = None
    request_timeout_s: float = 10.0  # to receive a request's headers, and then its body: 408 after it
    decode_pixels: int = 64_000_000  # pixels of large images decoded at once over all requests; the rest wait
    max_requests: int = 64  # requests in the app at once (/health aside); beyond it JSON 503 with Retry-After

    def check(self) -> ServeOptions:
        for name, value, low in (("--max-batch", self.max_batch, 1), ("--queue", self.queue, 1),
                                 ("--max-files", self.max_files, 1), ("--max-upload-mb", self.max_upload_bytes, 1),
                                 ("--max-pixels", self.max_pixels, 1), ("--max-wait-ms", self.max_wait_ms, 0),
                                 ("--request-timeout", self.request_timeout_s, 0.001),
                                 ("--decode-pixels", self.decode_pixels, 1),
                                 ("--max-requests", self.max_requests, 1)):
            if value < low:
                raise ImagefitError(f"{name} must be {'positive' if low else '0 or more'} (got {value})")
        if self.queue < self.max_files:
            raise ImagefitError(f"--queue ({self.queue}) must hold at least one full request (--max-files "
                                f"{self.max_files})")
        return self


class Overloaded(Exception):
    pass


class PixelBudget:
    """Pixels of large images being decoded at once, over every request: a full-size photo costs width × height × 3
    bytes and more while it is scaled down, so sixty concurrent requests of four 24-megapixel PNGs took the server
    from 0.6 to 5.4 GB. A request waits for room (up to `timeout`), or gets 503; when the last large decode ends, the
    freed memory goes back to the kernel."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.room: asyncio.Condition | None = None

    async def take(self, pixels: int, timeout: float) -> int:
        pixels = min(pixels, self.limit)  # a request larger than the budget runs alone
        self.room = self.room or asyncio.Condition()
        async with self.room:
            await asyncio.wait_for(self.room.wait_for(lambda: self.used + pixels <= self.limit), timeout)
            self.used += pixels
        return pixels

    async def give(self, pixels: int) -> None:
        async with self.room:
            self.used -= pixels
            self.room.notify_all()
            idle = self.used == 0
        if idle:
            from ..allocator import give_back_memory
            await run_in_threadpool(give_back_memory)


class MicroBatcher:
    def __init__(self, predictor, opts: ServeOptions):
        self.predictor, self.opts = predictor, opts
        self.pending = 0  # images queued or being predicted
        self.coming = 0  # requests in the handler, parsing and decoding, not yet submitted
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="imagefit-forward")
        self.batches = self.images = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, images: torch.Tensor) -> torch.Tensor:
        if self.pending + len(images) > self.opts.queue:
            raise Overloaded
        self.pending += len(images)
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((images, future))
        try:
            return await future
        finally:
            self.pending -= len(images)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.opts.max_wait_ms / 1000
            while count < self.opts.max_batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    # Work-conserving: wait for company only when a request is on its way (parsed or decoding now);
                    # a lone client's request runs at once instead of waiting out max_wait_ms for nobody (that
                    # wait was 2 of the 5.8 ms a batch-1 request took at one client).
                    if left <= 0 or not self.coming:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                items.append(item)
                count += len(item[0])
            batch = torch.cat([images for images, _ in items])
            try:
                probs = await loop.run_in_executor(self.executor, self.predictor.probabilities, batch, self.opts.tta)
            except Exception as e:  # hand the failure to every waiting request; the worker keeps serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(batch)
            start = 0
            for images, future in items:
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(probs[start:start + len(images)])
                start += len(images)


class Admission:
    """ASGI middleware: at most `limit` requests inside the app at once; the next get a JSON 503 with Retry-After at
    once. /health is always let through, so a load balancer sees a busy server as alive. (uvicorn's own
    limit_concurrency counts idle connections too, and answers in plain text: 63 silent sockets shut the server.)"""

    def __init__(self, app, limit: int):
        self.app, self.limit, self.inside = app, limit, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if self.inside >= self.limit:
            return await _send_error(send, 503, f"the server is busy ({self.inside} requests in progress); retry "
                                                f"shortly", retry_after=1)
        self.inside += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inside -= 1


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app sees it, without being kept; a body
    that does not arrive within `timeout` seconds gets 408."""

    def __init__(self, app, limit: int, timeout: float = 10.0):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body of {int(declared):,} bytes is over the "
                                                f"{self.limit:,}-byte limit; send fewer or smaller images")
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
            except TimeoutError:
                return await _send_error(send, 408, f"the request body did not arrive within {self.timeout:g} s; "
                                                    f"send it again")
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_error(send, 413, f"request body is over the {self.limit:,}-byte limit; send "
                                                    f"fewer or smaller images")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_body(status: int, message: str) -> bytes:
    import json
    return json.dumps({"error": message, "status": status}).encode()


async def _send_error(send, status: int, message: str, retry_after: int | None = None) -> None:
    body = _error_body(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# Images up to this many pixels are decoded on the event loop (a 32×32 PNG takes ~0.05 ms); larger ones in a worker
# thread, so a photo's decode never stalls the loop. Handing a small image to a thread cost more than decoding it:
# the wake-up and the GIL hand-over were ~15% of a batch-1 request's CPU in the app (benchmarks/RESULTS.md, issue 7).
INLINE_PIXELS = 128 * 128


def _decode(data: bytes, name: str, preprocessing: dict, max_pixels: int, inline_only: bool = False):
    """uint8 3×S×S, or (status, message) saying what is wrong with the file; with `inline_only`, the pixel count
    (an int) of an image that declares more than INLINE_PIXELS (to be decoded off the event loop, within budget)."""
    from PIL import Image, UnidentifiedImageError

    from ..preprocessing import ImageTooLarge
    if not data:
        return 400, f"file '{name}' is empty; send the image's bytes"
    limit = min(max_pixels, INLINE_PIXELS) if inline_only else max_pixels
    try:
        image = preprocessing.decode(data, max_pixels=limit)
    except ImageTooLarge as e:
        if inline_only and e.pixels <= max_pixels:
            return e.pixels
        return 413, f"file '{name}' declares {e} (over the {max_pixels:,}-pixel limit); send a smaller image"
    except Image.DecompressionBombError:
        return 413, f"file '{name}' is a decompression bomb (too many pixels); send a smaller image"
    except UnidentifiedImageError:
        return 415, f"file '{name}' is not an image this server can read; send JPEG, PNG, WebP, BMP, GIF or TIFF"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return 400, f"file '{name}' is corrupt or truncated ({type(e).__name__}); send it again or another file"
    return image


def _file_name(name: str | None, i: int) -> str:
    """The name a result is reported under: the upload's base name (no folders, no control characters), at most 120
    characters; 'file N' when it has none."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable())
    if not base:
        return f"file {i + 1}"
    return base if len(base) <= 120 else base[:80] + "…" + base[-39:]


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, and what to do")
    status: int


class TopClass(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="class name")
    probability: float = Field(ge=0, le=1)


class FileResult(BaseModel):
    file: str = Field(description="the upload's base name")
    top: list[TopClass] | None = Field(None, description="the most probable classes, best first")
    error: str | None = Field(None, description="why this file could not be used (the others still were)")
    status: int | None = Field(None, description="the HTTP status this file alone would have had")


class Predictions(BaseModel):
    predictions: list[FileResult]
    backend: str


class Health(BaseModel):
    status: str
    queued_images: int
    backend: str
    pid: int = Field(description="the serving process (one of several with --workers)")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    classes: list[str]
    preprocessing: dict
    tta: str
    tta_average: str
    backend: str
    identity: dict
    metrics: dict
    serving: dict
    uptime_s: float
    batches: int
    images: int


PREDICT_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more image files"}}}}}}


def create_app(predictor, opts: ServeOptions | None = None):
    opts = (opts or ServeOptions()).check()
    batcher = MicroBatcher(predictor, opts)
    budget = PixelBudget(opts.decode_pixels)
    page = resources.files("imagefit").joinpath("static/index.html").read_text()
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN
    # (the page was blank on an offline machine).
    from fastapi_offline import FastAPIOffline
    app = FastAPIOffline(title="imagefit", version="1", lifespan=lifespan,
                         description=f"{predictor.identity.get('model', 'model')} over {len(predictor.classes)} "
                                     f"classes")

    def error(status: int, message: str):
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        response = error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # a bug, not the client's fault: still JSON, and the server keeps serving
        return error(500, f"internal error ({type(exc).__name__}); the server keeps serving, report this with "
                          f"the request")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok", "queued_images": batcher.pending, "backend": predictor.backend, "pid": os.getpid()}

    @app.get("/model", response_model=ModelInfo)
    async def model():
        return {**predictor.describe(), "serving": {**opts.__dict__, "tta": opts.tta or predictor.tta},
                "uptime_s": round(time.time() - started, 1), "batches": batcher.batches, "images": batcher.images}

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY},
              responses={200: {"model": Predictions, "description": "a result per file: its top classes, or "
                                                                    "what was wrong with it"},
                         400: {"model": ErrorBody, "description": "empty, corrupt or malformed upload"},
                         413: {"model": ErrorBody, "description": "too large: body, image or file count"},
                         415: {"model": ErrorBody, "description": "not multipart, or a file that is not an image"},
                         408: {"model": ErrorBody, "description": "the request did not arrive in time"},
                         422: {"model": ErrorBody, "description": "a query parameter out of range"},
                         503: {"description": "overloaded: try again shortly"}})
    async def predict(request: Request, top_k: int = Query(3, ge=1, le=1000, description="classes per image")):
        batcher.coming += 1  # on its way to the batcher (which waits for company only while one is)
        try:
            names, decoded = await _read(request)
        finally:
            batcher.coming -= 1
        # One bad file does not fail the others: each gets its predictions or its own error; the request fails
        # (with the first file's error) only when no file in it can be used.
        good = [i for i, d in enumerate(decoded) if not isinstance(d, tuple)]
        if not good:
            raise HTTPException(*decoded[0])
        try:
            probs = await batcher.submit(torch.stack([decoded[i] for i in good]))
        except Overloaded:
            raise HTTPException(503, f"the server is busy ({batcher.pending} images queued); retry shortly",
                                headers={"Retry-After": "1"}) from None
        tops = dict(zip(good, top_classes(probs, predictor.classes, top_k)))
        # A JSONResponse of plain Python values: FastAPI's own encoding of a returned dict walks it again (~4% of a
        # batch-1 request's CPU in the app).
        return JSONResponse({"predictions": [{"file": n, "top": tops[i]} if i in tops else
                                             {"file": n, "error": decoded[i][1], "status": decoded[i][0]}
                                             for i, n in enumerate(names)],
                             "backend": predictor.backend})

    async def _read(request: Request) -> tuple[list[str], list]:
        """The uploads' names, and each one decoded (uint8 3×S×S) or the (status, message) of what is wrong."""
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise HTTPException(415, f"send multipart/form-data with the images in field 'files' (got "
                                     f"{kind or 'no content type'})")
        try:
            form = await request.form(max_files=opts.max_files, max_fields=opts.max_files)
        except StarletteHTTPException as e:  # malformed multipart, or over max_files (Starlette says which)
            if "Too many" in str(e.detail):
                raise HTTPException(413, f"{e.detail} (at most {opts.max_files} files per request)") from None
            raise HTTPException(400, f"{e.detail} (a malformed multipart body, or a part header such as a file name "
                                     f"too long to read); send the files again with short names") from None
        try:
            uploads = [f for f in form.getlist("files") if hasattr(f, "read")]
            if not uploads:
                raise HTTPException(400, "no images: send one or more files in the multipart field 'files'")
            names = [_file_name(f.filename, i) for i, f in enumerate(uploads)]
            request.state.images = len(names)
            blobs = [await f.read() for f in uploads]
        finally:
            await form.close()
        decoded = [_decode(b, n, predictor.preprocessing, opts.max_pixels, inline_only=True)
                   for b, n in zip(blobs, names)]
        large = [i for i, d in enumerate(decoded) if isinstance(d, int) and not isinstance(d, bool)]
        if large:
            try:
                taken = await budget.take(sum(decoded[i] for i in large), opts.request_timeout_s)
            except TimeoutError:
                raise HTTPException(503, f"the server is decoding {budget.used:,} pixels of large images; retry "
                                         f"shortly or send smaller images", headers={"Retry-After": "2"}) from None
            try:
                later = await run_in_threadpool(lambda: [_decode(blobs[i], names[i], predictor.preprocessing,
                                                                 opts.max_pixels) for i in large])
            finally:
                await budget.give(taken)
            for i, d in zip(large, later):
                decoded[i] = d
        return names, decoded

    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes, timeout=opts.request_timeout_s)
    app.add_middleware(Admission, limit=opts.max_requests)
    return app


class TimedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers (uvicorn has none): a connection that
    sends nothing, or dribbles its headers a byte at a time, is answered 408 in JSON and closed after `timeout`
    seconds, so silent sockets cannot pile up. Module-level (and its timeout an environment variable) so that the
    worker processes of --workers, started by spawning, can name it."""

    _deadline = None

    @property
    def timeout(self) -> float:
        return float(os.environ.get("IMAGEFIT_REQUEST_TIMEOUT", "10"))

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        body = _error_body(408, f"no complete request within {self.timeout:g} s; send the request again")
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def bind(host: str, port: int):
    """The listening socket, bound before anything is printed: a port in use is one line, not a false start."""
    import errno
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ImagefitError(f"port {port} on {host} is in use (another server?); pass another --port, or stop "
                                f"the other server") from None
        raise ImagefitError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None
    sock.set_inheritable(True)
    return sock


def app_from_environment():
    """The app of one --workers process (uvicorn's supervisor spawns each, and each loads its own model)."""
    import json
    spec = json.loads(os.environ["IMAGEFIT_SERVE"])
    from .inference import load_predictor
    predictor = load_predictor(spec["bundle"], spec["backend"], spec["threads"], spin=False)
    app = create_app(predictor, ServeOptions(**spec["options"]))
    if spec["log_level"] != "warning":
        app.add_middleware(RequestLog)
    return app


def run_server(bundle: str, host: str, port: int, opts: ServeOptions, backend: str = "auto",
               threads: int = 0, log_level: str = "warning", as_json: bool = False, workers: int = 1) -> None:
    """Serve `bundle` until stopped. The socket is bound and listening before the model loads, so the address printed
    (one line; with `as_json`, one JSON object: url, page, docs, pid) already accepts connections; port 0 takes a
    free one."""
    import json
    import uvicorn

    from .inference import load_predictor
    if not 0 <= port < 65536:
        raise ImagefitError(f"--port must be between 0 (any free port) and 65535 (got {port})")
    if log_level not in ("warning", "info", "debug"):
        raise ImagefitError(f"--log-level must be warning, info or debug (got {log_level!r})")
    opts.check()
    if workers < 1:
        raise ImagefitError(f"--workers must be 1 or more (got {workers})")
    sock = bind(host, port)
    sock.listen(2048)
    os.environ["IMAGEFIT_REQUEST_TIMEOUT"] = str(opts.request_timeout_s)
    port = sock.getsockname()[1]
    predictor = load_predictor(bundle, backend, threads, spin=False)
    app = create_app(predictor, opts)
    if log_level != "warning":
        app.add_middleware(RequestLog)
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if as_json:
        print(json.dumps({"url": base, "page": base + "/", "docs": base + "/docs", "pid": os.getpid(),
                          "bundle": predictor.identity.get("bundle", str(bundle)), "backend": predictor.backend}),
              flush=True)
    else:
        print(f"serving {predictor.identity.get('bundle', bundle)} ({predictor.backend}, {len(predictor.classes)} "
              f"classes) on {base}: the page at {base}/, the API's docs at {base}/docs", flush=True)
    # No uvicorn limit_concurrency: it counts idle connections as well and answers in plain text; Admission bounds the
    # requests in the app instead, and the timed protocol closes connections that never send a whole request.
    if workers == 1:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", http=TimedProtocol)).run(sockets=[sock])
        return
    # Several processes accept on the one socket, each with its own model and a share of the cores; uvicorn's
    # supervisor restarts one that dies. The model loaded above checked the bundle, and is not needed here.
    from dataclasses import asdict

    from uvicorn.supervisors import Multiprocess
    del app, predictor
    share = threads or max(1, (os.cpu_count() or 1) // workers)
    os.environ["IMAGEFIT_SERVE"] = json.dumps({"bundle": str(bundle), "backend": backend, "threads": share,
                                               "options": asdict(opts), "log_level": log_level})
    config = uvicorn.Config("imagefit.deploy.serve:app_from_environment", factory=True, workers=workers,
                            log_level="warning", http=TimedProtocol)
    Multiprocess(config, sockets=[sock]).run()


class RequestLog:
    """ASGI middleware for `--log-level info`: one line per request on standard error: method, path, status,
    milliseconds, and the images of a /predict."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            images = scope.get("state", {}).get("images")
            print(f"{scope['method']} {scope['path']} {status[0]} {1000 * (time.perf_counter() - start):.1f} ms"
                  + (f" {images} images" if images is not None else ""), file=sys.stderr, flush=True)
