"""`dtn serve`: the web app in process (TestClient), a real server under 200 concurrent uploads, and the
page in headless Chromium."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 fork for its TestClient but still works with httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from dtn import DTN
from dtn.cli import main
from dtn.errors import DtnError
from dtn.serve import Limits, bind_socket, is_loopback, make_app, png_bytes, source_samples

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, digit_folders) -> Path:
    """One tiny trained run (a few seconds), as `dtn serve` would be given."""
    tmp = tmp_path_factory.mktemp("serve")
    src, tgt = digit_folders
    assert main(["--quiet", "run", "tiny", "--runs-dir", str(tmp / "runs"), "--name", "t",
                 "--set", f"data.source=folder:{src}", "--set", f"data.target=folder:{tgt}"]) == 0
    return tmp / "runs" / "t"


@pytest.fixture(scope="module")
def model(served_run: Path) -> DTN:
    return DTN.load(served_run)


def png_of(shape: tuple[int, ...], seed: int = 0) -> bytes:
    return png_bytes(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def post_image(client, data: bytes, name: str = "in.png"):
    return client.post("/transfer", files={"image": (name, data, "image/png")})


# ---------------------------------------------------------------------------------- in process

def test_upload_returns_a_png_of_the_models_output_size(model):
    size = model.cfg.nets.image_size
    jpeg = io.BytesIO()
    Image.fromarray(np.full((50, 90, 3), 200, np.uint8)).save(jpeg, format="JPEG")
    with TestClient(make_app(model)) as client:
        for data in (png_of((40, 24, 3)), png_of((28, 28)), jpeg.getvalue()):
            r = post_image(client, data)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(r.content)).size == (size, size)
        raw = client.post("/transfer", content=png_of((32, 32, 3)), headers={"content-type": "image/png"})
        assert raw.status_code == 200 and Image.open(io.BytesIO(raw.content)).size == (size, size)


def test_transfer_matches_the_python_api(model):
    image = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with TestClient(make_app(model)) as client:
        r = post_image(client, png_bytes(image))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), model.transfer(image[None])[0])


def test_oversized_upload_is_413_whether_declared_or_streamed(model):
    with TestClient(make_app(model, Limits(max_upload_bytes=1000))) as client:
        r = post_image(client, png_of((64, 64, 3)))
        assert r.status_code == 413 and "1000" not in r.text and "limit" in r.text and "\n" not in r.text
        chunks = (b"x" * 400 for _ in range(4))   # no Content-Length: refused while reading
        r = client.post("/transfer", content=chunks, headers={"content-type": "image/png"})
        assert r.status_code == 413, r.text
        assert client.get("/healthz").json()["in_flight"] == 0


@pytest.mark.parametrize("data, reason", [
    (b"this is not an image at all", "not an image file"),
    (b"", "empty upload"),
    (png_of((64, 64, 3))[:200], "truncated or corrupt"),
])
def test_garbage_is_400_with_one_line(model, data, reason):
    with TestClient(make_app(model)) as client:
        r = post_image(client, data)
    assert r.status_code == 400 and reason in r.text and "\n" not in r.text, r.text


def test_a_decompression_bomb_is_400(model):
    bomb = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(bomb, format="PNG")   # 50 Mpx declared, a few kB on the wire
    assert len(bomb.getvalue()) < 100_000
    with TestClient(make_app(model)) as client:
        r = post_image(client, bomb.getvalue())
    assert r.status_code == 400 and "decompression bomb" in r.text, r.text


def test_multipart_without_a_file_is_400(model):
    with TestClient(make_app(model)) as client:
        r = client.post("/transfer", files={"note": (None, "hello")})   # a text field only
    assert r.status_code == 400 and "no file" in r.text, r.text


class BlockedModel:
    """Wraps a model so its transfer waits until the test lets it go (a deterministic full queue)."""

    def __init__(self, model: DTN) -> None:
        self.model, self.cfg = model, model.cfg
        self.started, self.release = threading.Event(), threading.Event()

    def transfer(self, images):
        self.started.set()
        assert self.release.wait(20), "the test never released the model"
        return self.model.transfer(images)


def test_a_full_queue_answers_503_with_retry_after(model):
    blocked = BlockedModel(model)
    with TestClient(make_app(blocked, Limits(workers=1, max_waiting=1))) as client:
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(post_image(client, png_of((32, 32, 3)))))
                   for _ in range(2)]
        threads[0].start()
        assert blocked.started.wait(10)
        threads[1].start()
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["in_flight"] < 2:
            assert time.monotonic() < deadline, "the second request never reached the queue"
            time.sleep(0.01)
        busy = post_image(client, png_of((32, 32, 3)))
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.text
        blocked.release.set()
        for t in threads:
            t.join(20)
        assert [r.status_code for r in results] == [200, 200]
        assert client.get("/healthz").json()["in_flight"] == 0


def test_page_samples_and_healthz(model, served_run):
    samples, note = source_samples(model.cfg, 3)
    assert len(samples) == 3 and note == ""
    with TestClient(make_app(model, samples=samples)) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'type="file"' in page.text
        assert "<script src" not in page.text and "http://" not in page.text and "https://" not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        listing = client.get("/samples").json()
        assert [s["url"] for s in listing["samples"]] == ["samples/0.png", "samples/1.png", "samples/2.png"]
        assert Image.open(io.BytesIO(client.get("/samples/2.png").content)).size == (32, 32)
        assert client.get("/samples/3.png").status_code == 404
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["capacity"] == Limits().capacity


def test_samples_from_a_missing_source_give_a_note(model):
    cfg = dataclasses.replace(model.cfg, data=dataclasses.replace(model.cfg.data, source="folder:/nonexistent"))
    samples, note = source_samples(cfg, 4)
    assert samples == [] and "/nonexistent" in note


def test_loopback_and_a_taken_port():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with bind_socket("127.0.0.1", 0) as sock:
        with pytest.raises(DtnError, match="cannot listen on 127.0.0.1"):
            bind_socket("127.0.0.1", sock.getsockname()[1])


def test_serve_without_the_web_packages_is_one_line(monkeypatch, capsys, served_run):
    import dtn

    monkeypatch.delitem(sys.modules, "dtn.serve")
    monkeypatch.delattr(dtn, "serve")                   # else `from . import serve` finds the attribute
    monkeypatch.setitem(sys.modules, "uvicorn", None)   # makes `import uvicorn` fail
    assert main(["serve", str(served_run), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "dtn[serve]"' in err


# --------------------------------------------------------------------------------- real server

def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak over the process's life) of a process, in KiB, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


@contextlib.contextmanager
def cli_server(run: Path, tmp_path: Path, *args: str):
    """`dtn serve RUN --port 0 ...` in a subprocess; yields (process, base URL); stops it with SIGTERM."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dtn.cli", "serve", str(run), "--port", "0", *args],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"http://127\.0\.0\.1:\d+/", log.read_text())):
            assert proc.poll() is None, f"dtn serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, "dtn serve did not start within 60 s"
            time.sleep(0.1)
        yield proc, m.group(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


async def burst(url: str, bodies: list[bytes]) -> list[int | str]:
    """Post every body at once over separate connections; an answer's status, or the error's name."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def one(body: bytes) -> int | str:
            try:
                return (await client.post("/transfer", files={"image": ("in.png", body, "image/png")})).status_code
            except httpx.HTTPError as exc:
                return exc.__class__.__name__
        return await asyncio.gather(*(one(b) for b in bodies))


@pytest.mark.slow
def test_200_concurrent_uploads_to_a_real_server(served_run, tmp_path):
    """Every request gets an answer (a PNG, 400, 413 or 503), the server still answers afterwards, and its
    peak RSS stays within 200 MB of its idle RSS (200 uploads of up to 0.3 MB each)."""
    good, garbage, big = png_of((48, 48, 3)), b"garbage" * 100, os.urandom(300_000)
    bodies = [good] * 170 + [garbage] * 15 + [big] * 15
    with cli_server(served_run, tmp_path, "--max-upload-mb", "0.25", "--queue", "32", "--samples", "0",
                    "--threads", "1") as (proc, url):
        assert httpx.get(url + "healthz").status_code == 200
        idle = rss_kib(proc.pid, "VmRSS")
        start = time.monotonic()
        statuses = asyncio.run(burst(url, bodies))
        took = time.monotonic() - start
        health = httpx.get(url + "healthz", timeout=10)
        peak = rss_kib(proc.pid, "VmHWM")
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM: the exit status says so.
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    print(f"200 uploads in {took:.1f} s: {sorted(collections.Counter(statuses).items(), key=str)}; "
          f"idle RSS {idle // 1024} MiB, peak {peak // 1024} MiB")
    assert took < 30, f"200 uploads took {took:.1f} s"
    assert set(statuses[:170]) <= {200, 503} and 200 in statuses[:170], statuses
    assert set(statuses[170:185]) <= {400, 503} and set(statuses[185:]) == {413}, statuses
    assert health.status_code == 200 and health.json()["in_flight"] == 0
    assert peak - idle < 200 * 1024, f"peak RSS {peak // 1024} MiB vs idle {idle // 1024} MiB"


# ------------------------------------------------------------------------------------- browser

@contextlib.contextmanager
def thread_server(app):
    """uvicorn in a thread on a free loopback port; yields the base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def chromium_driver():
    """Headless Chromium through the system chromedriver (never Selenium Manager: no downloads)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"headless browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_the_page_in_headless_chromium(model, chromium_driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    upload = tmp_path / "upload.png"
    upload.write_bytes(png_of((60, 40, 3), seed=5))
    samples = [png_of((32, 32, 3), seed=s) for s in range(3)]
    driver = chromium_driver
    width = "return document.getElementById('output').naturalWidth"
    with thread_server(make_app(model, samples=samples)) as url:
        driver.get(url)
        WebDriverWait(driver, 10).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#samples img")) == 3)
        driver.find_element(By.ID, "file").send_keys(str(upload))
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(width) > 0)
        assert driver.execute_script(width) == model.cfg.nets.image_size
        assert driver.find_element(By.ID, "download").get_attribute("href").startswith("blob:")
        assert driver.find_element(By.ID, "status").text == "done: upload.png"
        driver.find_elements(By.CSS_SELECTOR, "#samples img")[1].click()
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status").text == "done: sample-1.png")
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
