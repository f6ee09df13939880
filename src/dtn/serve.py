"""`dtn serve RUN_OR_BUNDLE`: a local web page that transfers one uploaded image at a time.

    app = make_app(DTN.load("runs/digits"))      # a Starlette app; the tests drive it with TestClient
    sock = bind_socket("127.0.0.1", 8000)
    run_server(app, sock)                         # what `dtn serve` does, until Ctrl-C / SIGTERM

Endpoints: GET / (the page: inline CSS and JS, nothing from a CDN), POST /transfer (multipart field
`image`, or the raw image bytes as the body -> PNG of the model's output size), GET /samples (JSON list
of a few source test images), GET /samples/{i}.png, GET /healthz (JSON: status, in-flight, capacity).

Limits, all held by the app (no module globals):

* the request body is capped (default 10 MB) -> 413, checked on Content-Length and again while reading;
* images are decoded by the project's one decoder (data/image_folder.py, with its decompression-bomb
  guard); anything that is not a usable image -> 400 with a one-line reason;
* at most `workers` transfers run at once and `max_waiting` more may be in flight (reading or queued);
  beyond that 503 with Retry-After. A slot is taken *before* the body is read, so memory is bounded by
  capacity x upload cap however many clients connect.

starlette, uvicorn and python-multipart are the optional extra `dtn[serve]`; the CLI turns their
absence into a one-line hint.
"""
from __future__ import annotations

import asyncio
import html
import io
import ipaddress
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn
import python_multipart  # noqa: F401 - Request.form() needs it; importing here makes a missing one fail early
from PIL import Image
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .errors import DataError, DtnError
from .data.image_folder import BadImage, decode_image, resize_crop, to_mode

MB = 1024 * 1024
#: Package names whose absence means "install the serve extra" (import names, not PyPI names).
WEB_PACKAGES = ("starlette", "uvicorn", "python_multipart")


@dataclass(frozen=True)
class Limits:
    """What one server accepts; every refusal names the limit it hit."""

    max_upload_bytes: int = 10 * MB   # request body cap -> 413
    workers: int = 1                  # transfers running at once (model calls are serialized by default)
    max_waiting: int = 8              # more requests in flight (reading or queued) -> beyond: 503
    retry_after_s: int = 1            # Retry-After of a 503

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1:
            raise DtnError(f"the upload cap must be positive, got {self.max_upload_bytes} bytes")
        if self.workers < 1 or self.max_waiting < 0:
            raise DtnError(f"need workers >= 1 and a queue >= 0, got {self.workers} and {self.max_waiting}")

    @property
    def capacity(self) -> int:
        return self.workers + self.max_waiting


class UploadRefused(Exception):
    """A request we answer with a 4xx and a one-line message (the exception text)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Slots:
    """Counts transfer requests in flight, capped at `capacity`. A lock, because a slot is given back
    from the worker thread when its job ends, even when the client has already gone."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.in_use = capacity, 0
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.in_use >= self.capacity:
                return False
            self.in_use += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.in_use -= 1


class ServeState:
    """Everything one app holds: the model, its worker pool, the in-flight slots, samples, limits."""

    def __init__(self, model, limits: Limits, samples: list[bytes], samples_note: str) -> None:
        self.model, self.limits = model, limits
        self.samples, self.samples_note = samples, samples_note
        self.slots = Slots(limits.capacity)
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="dtn-serve")


# ------------------------------------------------------------------------------------- images

def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> PNG file bytes."""
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_upload(data: bytes, size: int, channels: int) -> np.ndarray:
    """Upload bytes -> uint8 (size, size, channels), cropped like an image folder is for training, so
    a photo keeps its aspect instead of being squashed. BadImage says why an upload is unusable."""
    if not data:
        raise BadImage("empty upload (0 bytes)")
    img = decode_image(io.BytesIO(data), draft=size)
    arr = np.asarray(resize_crop(to_mode(img, "L" if channels == 1 else "RGB"), size), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def transfer_png(model, data: bytes) -> bytes:
    """Runs in a worker thread: decode, G(x), encode. Decoding happens here too (not on the event
    loop), so the bounded pool also bounds the memory spent on decoding."""
    nets = model.cfg.nets
    image = decode_upload(data, nets.image_size, nets.source_channels)
    return png_bytes(np.asarray(model.transfer(image[None]))[0])


def source_samples(cfg, n: int) -> tuple[list[bytes], str]:
    """PNGs of `n` evenly spaced images of the model's source test split, and a note saying why there
    are none (a bundle served where its source data set is absent still serves uploads)."""
    if n <= 0:
        return [], "samples disabled"
    from . import data

    try:
        split = data.load(cfg.data.source, "test", cfg.data.data_dir or None)
    except DataError as exc:
        return [], f"no source samples: {exc}"
    idx = np.linspace(0, len(split) - 1, min(n, len(split))).round().astype(int)
    return [png_bytes(np.array(split.images[i])) for i in idx], ""


# ------------------------------------------------------------------------------------ requests

async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused (413) as soon as it passes `cap` bytes, so an oversized upload is never
    held in memory whatever its Content-Length says."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise UploadRefused(413, f"upload is larger than the {cap / MB:g} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def declared_too_large(request: Request, cap: int) -> bool:
    declared = request.headers.get("content-length", "")
    return declared.isdigit() and int(declared) > cap


async def image_bytes(request: Request, body: bytes) -> bytes:
    """The image inside an already read body: the multipart file field (`image`, or the only file), else
    the body itself (`curl --data-binary @in.png`)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, receive=replay).form(max_files=1, max_fields=4) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                files = [v for v in form.values() if not isinstance(v, str)]
                if not files:
                    raise UploadRefused(400, "the multipart upload has no file (send it as the field 'image')")
                upload = files[0]
            return await upload.read()
    except MultiPartException as exc:
        raise UploadRefused(400, f"malformed multipart upload: {exc.message}") from None


async def transfer(request: Request) -> Response:
    """POST /transfer: image -> PNG of G(image). 413 / 400 / 503 with one line otherwise."""
    state: ServeState = request.app.state.serve
    cap = state.limits.max_upload_bytes
    if declared_too_large(request, cap):
        return PlainTextResponse(f"upload is larger than the {cap / MB:g} MB limit", 413)
    if not state.slots.try_take():
        return PlainTextResponse(f"busy: {state.slots.capacity} transfers already in flight; retry shortly",
                                 503, headers={"Retry-After": str(state.limits.retry_after_s)})
    handed_over = False
    try:
        data = await image_bytes(request, await read_body(request, cap))
        job = state.pool.submit(transfer_png, state.model, data)
        job.add_done_callback(lambda _: state.slots.give())   # the worker frees the slot when done
        handed_over = True
        png = await asyncio.wrap_future(job)
    except UploadRefused as exc:
        return PlainTextResponse(str(exc), exc.status)
    except BadImage as exc:
        return PlainTextResponse(f"not a usable image: {exc}", 400)
    finally:
        if not handed_over:
            state.slots.give()
    return Response(png, media_type="image/png", headers={
        "Content-Disposition": 'inline; filename="dtn-transfer.png"', "Cache-Control": "no-store"})


async def healthz(request: Request) -> JSONResponse:
    state: ServeState = request.app.state.serve
    return JSONResponse({"status": "ok", "in_flight": state.slots.in_use, "capacity": state.slots.capacity,
                         "model": model_info(state.model)})


async def list_samples(request: Request) -> JSONResponse:
    state: ServeState = request.app.state.serve
    return JSONResponse({"samples": [{"url": f"samples/{i}.png"} for i in range(len(state.samples))],
                         "note": state.samples_note})


async def sample_png(request: Request) -> Response:
    state: ServeState = request.app.state.serve
    i = request.path_params["index"]
    if i >= len(state.samples):
        return PlainTextResponse(f"no sample {i}: there are {len(state.samples)}", 404)
    return Response(state.samples[i], media_type="image/png")


async def page(request: Request) -> HTMLResponse:
    state: ServeState = request.app.state.serve
    info = model_info(state.model)
    values = {"SOURCE": info["source"], "TARGET": info["target"], "SIZE": str(info["image_size"]),
              "MAX_MB": f"{state.limits.max_upload_bytes / MB:g}",
              "MAX_BYTES": str(state.limits.max_upload_bytes)}
    text = PAGE
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value))
    return HTMLResponse(text, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})


def model_info(model) -> dict:
    cfg = model.cfg
    return {"source": cfg.data.source, "target": cfg.data.target, "image_size": cfg.nets.image_size}


# ----------------------------------------------------------------------------------------- app

def make_app(model, limits: Limits = Limits(), samples: list[bytes] | None = None,
             samples_note: str = "") -> Starlette:
    """The web app around a loaded model (`DTN.load(run_or_bundle)`, or anything with `.cfg` and
    `.transfer(uint8 images)`). `samples`: PNG bytes offered on the page (see `source_samples`)."""
    state = ServeState(model, limits, list(samples or []), samples_note)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        state.pool.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=[
        Route("/", page), Route("/healthz", healthz), Route("/samples", list_samples),
        Route("/samples/{index:int}.png", sample_png), Route("/transfer", transfer, methods=["POST"]),
    ], lifespan=lifespan)
    app.state.serve = state
    return app


def app_for(path: Path, device: str = "cpu", limits: Limits = Limits(), n_samples: int = 8,
            threads: int | None = None) -> Starlette:
    """Load a run directory or exported bundle and build its app. `threads` bounds torch's intra-op
    threads (None: min(4, CPUs)): a small net gains nothing from more, and they would contend with the
    request loop."""
    import torch

    from .apply import DTN

    torch.set_num_threads(threads or default_threads())
    model = DTN.load(path, device=device)
    return make_app(model, limits, *source_samples(model.cfg, n_samples))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:   # a host name: only "localhost" is known to stay on this machine
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen before loading the model, so a taken port fails at once with one line (port 0: any free)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=256)
    except OSError as exc:
        raise DtnError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_server(app: Starlette, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on an already bound socket until SIGINT/SIGTERM (uvicorn handles both gracefully)."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ---------------------------------------------------------------------------------------- page

CSP = ("default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'")

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>dtn: {{SOURCE}} &rarr; {{TARGET}}</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.3rem; margin-bottom: .2rem; overflow-wrap: anywhere; }
 .pair { display: flex; gap: 1.5rem; flex-wrap: wrap; margin: 1rem 0; }
 figure { margin: 0; }
 figure img { width: 256px; height: 256px; object-fit: contain; background: #eee; border: 1px solid #ccc;
              image-rendering: pixelated; display: block; }
 figcaption { color: #555; font-size: .9rem; }
 #samples img { width: 48px; height: 48px; margin: 0 .3rem .3rem 0; cursor: pointer; border: 1px solid #ccc;
                image-rendering: pixelated; }
 #samples img:hover { border-color: #06c; }
 #status.bad { color: #b00; }
 small { color: #666; }
</style></head>
<body>
<h1>Domain transfer: {{SOURCE}} &rarr; {{TARGET}}</h1>
<small>G = g &#8728; f from this run; images are centre-cropped and resized to {{SIZE}}&times;{{SIZE}}.</small>
<p><label>Upload an image: <input type="file" id="file" accept="image/*"></label></p>
<p>or pick a source test sample:</p>
<div id="samples"></div>
<div class="pair">
 <figure><img id="input" alt="input"><figcaption>input</figcaption></figure>
 <figure><img id="output" alt="transferred"><figcaption>transfer ({{SIZE}}&times;{{SIZE}})
  <a id="download" download="dtn-transfer.png" hidden>download PNG</a></figcaption></figure>
</div>
<p id="status" role="status">Pick an image.</p>
<small>Limits: uploads up to {{MAX_MB}} MB; PNG, JPEG, WebP, BMP; a few requests at a time (busy: retry).</small>
<script>
"use strict";
const MAX_BYTES = {{MAX_BYTES}};
const byId = (id) => document.getElementById(id);
const urls = { input: null, output: null };

function say(text, bad) {
  byId("status").textContent = text;
  byId("status").className = bad ? "bad" : "";
}

function show(which, blob) {
  if (urls[which]) URL.revokeObjectURL(urls[which]);
  urls[which] = URL.createObjectURL(blob);
  byId(which).src = urls[which];
  return urls[which];
}

async function send(blob, name) {
  if (blob.size > MAX_BYTES) { say(name + " is larger than the {{MAX_MB}} MB limit", true); return; }
  show("input", blob);
  say("transferring " + name + " ...");
  const form = new FormData();
  form.append("image", blob, name);
  let response;
  try {
    response = await fetch("transfer", { method: "POST", body: form });
  } catch (err) {
    say("the server did not answer: " + err, true);
    return;
  }
  if (!response.ok) { say(response.status + ": " + (await response.text()), true); return; }
  const url = show("output", await response.blob());
  byId("download").href = url;
  byId("download").hidden = false;
  say("done: " + name);
}

byId("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) send(file, file.name);
});

async function loadSamples() {
  const listing = await (await fetch("samples")).json();
  listing.samples.forEach((sample, i) => {
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = "sample " + i;
    img.title = "transfer sample " + i;
    img.addEventListener("click", async () => send(await (await fetch(sample.url)).blob(), "sample-" + i + ".png"));
    byId("samples").append(img);
  });
  if (!listing.samples.length) byId("samples").textContent = listing.note || "no samples";
}
loadSamples().catch((err) => say("could not list samples: " + err, true));
</script>
</body></html>
"""
