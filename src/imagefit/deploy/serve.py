"""The web app: a page to drop images on, and a JSON API, for one bundle, on a CPU (FastAPI under uvicorn).

    GET  /          the page (static/index.html): pick or drop images, see the top classes as bars
    POST /predict   multipart field `files` (one or more images) → top-k classes per image
    GET  /health    liveness and queue depth
    GET  /model     classes, preprocessing, TTA, metrics, backend and the bundle's SHA-256
    GET  /docs      the OpenAPI page (FastAPI's)

Micro-batching (`MicroBatcher`): decoded images from concurrent requests wait in one queue; a single worker takes
everything queued (up to `max_batch` images, waiting at most `max_wait_ms` for more) and runs one forward pass in
its own thread, so the event loop keeps accepting requests meanwhile. The queue is bounded in images: beyond it a
request gets 503 at once rather than memory. Request bodies are bounded by `BodyLimit` (413, counted as the bytes
arrive, whether or not the client sent Content-Length), images by their declared pixel count before decoding
(413), files per request by `max_files` (413). Every error is JSON: {"error": "...", "status": N}.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from contextlib import asynccontextmanager
from importlib import resources

import torch
from fastapi import FastAPI, HTTPException, Query, Request  # FastAPI reads the handlers' annotations by name
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ImagefitError
from .inference import top_classes


@dataclass
class ServeOptions:
    max_batch: int = 32
    max_wait_ms: float = 2.0
    queue: int = 256  # images waiting at most
    max_files: int = 16
    max_upload_bytes: int = 10_000_000
    max_pixels: int = 25_000_000
    tta: str | None = None

    def check(self) -> ServeOptions:
        for name, value, low in (("--max-batch", self.max_batch, 1), ("--queue", self.queue, 1),
                                 ("--max-files", self.max_files, 1), ("--max-upload-mb", self.max_upload_bytes, 1),
                                 ("--max-pixels", self.max_pixels, 1), ("--max-wait-ms", self.max_wait_ms, 0)):
            if value < low:
                raise ImagefitError(f"{name} must be {'positive' if low else '0 or more'} (got {value})")
        if self.queue < self.max_files:
            raise ImagefitError(f"--queue ({self.queue}) must hold at least one full request (--max-files "
                                f"{self.max_files})")
        return self


class Overloaded(Exception):
    pass


class MicroBatcher:
    def __init__(self, predictor, opts: ServeOptions):
        self.predictor, self.opts = predictor, opts
        self.pending = 0  # images queued or being predicted
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
                    if left <= 0:
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


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before the app sees it, without being kept."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body of {int(declared):,} bytes is over the "
                                                f"{self.limit:,}-byte limit; send fewer or smaller images")
        chunks, size = [], 0
        while True:
            message = await receive()
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


async def _send_error(send, status: int, message: str) -> None:
    import json
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


# Images up to this many pixels are decoded on the event loop (a 32×32 PNG takes ~0.05 ms); larger ones in a worker
# thread, so a photo's decode never stalls the loop. Handing a small image to a thread cost more than decoding it:
# the wake-up and the GIL hand-over were ~15% of a batch-1 request's CPU in the app (benchmarks/RESULTS.md, issue 7).
INLINE_PIXELS = 128 * 128


def _decode(data: bytes, name: str, preprocessing: dict, max_pixels: int, inline_only: bool = False):
    """uint8 3×S×S, or (status, message) saying what is wrong with the file; with `inline_only`, None for an image
    that declares more than INLINE_PIXELS (to be decoded again off the event loop)."""
    from PIL import Image, UnidentifiedImageError

    from ..preprocessing import ImageTooLarge
    if not data:
        return 400, f"file '{name}' is empty; send the image's bytes"
    limit = min(max_pixels, INLINE_PIXELS) if inline_only else max_pixels
    try:
        image = preprocessing.decode(data, max_pixels=limit)
    except ImageTooLarge as e:
        if inline_only and e.pixels <= max_pixels:
            return None
        return 413, f"file '{name}' declares {e} (over the {max_pixels:,}-pixel limit); send a smaller image"
    except Image.DecompressionBombError:
        return 413, f"file '{name}' is a decompression bomb (too many pixels); send a smaller image"
    except UnidentifiedImageError:
        return 415, f"file '{name}' is not an image this server can read; send JPEG, PNG, WebP, BMP, GIF or TIFF"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return 400, f"file '{name}' is corrupt or truncated ({type(e).__name__}); send it again or another file"
    return image


PREDICT_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"],
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or more image files"}}}}}}


def create_app(predictor, opts: ServeOptions | None = None):
    opts = (opts or ServeOptions()).check()
    batcher = MicroBatcher(predictor, opts)
    page = resources.files("imagefit").joinpath("static/index.html").read_text()
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="imagefit", version="1", lifespan=lifespan,
                  description=f"{predictor.identity.get('model', 'model')} over {len(predictor.classes)} classes")

    def error(status: int, message: str):
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued_images": batcher.pending, "backend": predictor.backend}

    @app.get("/model")
    async def model():
        return {**predictor.describe(), "serving": {**opts.__dict__, "tta": opts.tta or predictor.tta},
                "uptime_s": round(time.time() - started, 1), "batches": batcher.batches, "images": batcher.images}

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY},
              responses={400: {"description": "empty, corrupt or malformed upload"},
                         413: {"description": "too large: body, image or file count"},
                         415: {"description": "not multipart, or a file that is not an image"},
                         503: {"description": "overloaded: try again shortly"}})
    async def predict(request: Request, top_k: int = Query(3, ge=1, le=1000, description="classes per image")):
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise HTTPException(415, f"send multipart/form-data with the images in field 'files' (got "
                                     f"{kind or 'no content type'})")
        try:
            form = await request.form(max_files=opts.max_files, max_fields=opts.max_files)
        except StarletteHTTPException as e:  # malformed multipart, or over max_files (Starlette says which)
            status = 413 if "Too many" in str(e.detail) else 400
            raise HTTPException(status, f"{e.detail} (at most {opts.max_files} files per request)") from None
        try:
            uploads = [f for f in form.getlist("files") if hasattr(f, "read")]
            if not uploads:
                raise HTTPException(400, "no images: send one or more files in the multipart field 'files'")
            names = [f.filename or f"file {i + 1}" for i, f in enumerate(uploads)]
            blobs = [await f.read() for f in uploads]
        finally:
            await form.close()
        decoded = [_decode(b, n, predictor.preprocessing, opts.max_pixels, inline_only=True)
                   for b, n in zip(blobs, names)]
        large = [i for i, d in enumerate(decoded) if d is None]
        if large:
            later = await run_in_threadpool(lambda: [_decode(blobs[i], names[i], predictor.preprocessing,
                                                             opts.max_pixels) for i in large])
            for i, d in zip(large, later):
                decoded[i] = d
        for d in decoded:
            if isinstance(d, tuple):
                raise HTTPException(*d)
        try:
            probs = await batcher.submit(torch.stack(decoded))
        except Overloaded:
            raise HTTPException(503, f"the server is busy ({batcher.pending} images queued); retry shortly") \
                from None
        tops = top_classes(probs, predictor.classes, top_k)
        # A JSONResponse of plain Python values: FastAPI's own encoding of a returned dict walks it again (~4% of a
        # batch-1 request's CPU in the app).
        return JSONResponse({"predictions": [{"file": n, "top": top} for n, top in zip(names, tops)],
                             "backend": predictor.backend})

    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes)
    return app


def run_server(bundle: str, host: str, port: int, opts: ServeOptions, backend: str = "auto", threads: int = 0,
               limit_concurrency: int = 64) -> None:
    import uvicorn

    from .inference import load_predictor
    if not 0 < port < 65536:
        raise ImagefitError(f"--port must be between 1 and 65535 (got {port})")
    predictor = load_predictor(bundle, backend, threads, spin=False)
    app = create_app(predictor, opts)
    print(f"serving {predictor.identity.get('bundle', bundle)} ({predictor.backend}, {len(predictor.classes)} "
          f"classes) on http://{host}:{port}", flush=True)
    # limit_concurrency: connections beyond it get 503 from uvicorn itself, so memory stays bounded under overload
    uvicorn.run(app, host=host, port=port, limit_concurrency=limit_concurrency, log_level="warning")
