"""Load probe of the web server: stalled uploads and big uploads against a real server.

    python scripts/serve_load_probe.py                         # this checkout, checkpoints/
    python scripts/serve_load_probe.py --code /work/old        # another checkout of the repo
    python scripts/serve_load_probe.py --server-arg=--max-inflight-pixels=40000000

Starts ``python -m fast_style.serve`` from ``--code`` (its ``fast_style`` is the one imported)
on a free loopback port, then runs three phases and prints a Markdown table of each:

1. *unloaded*: ``--normal`` sequential requests (``assets/photos/kodim23.jpg``) from 127.0.0.2;
2. *stalled*: ``--stalled`` uploads from 127.0.0.1 that send their headers (Content-Length
   1 MB) and a few bytes, then nothing; the same normal requests from 127.0.0.2 while they are
   open; then how (and after how long) the server answered each stalled upload, watched for
   ``--watch`` seconds;
3. *big*: ``--big`` concurrent uploads of a synthetic ``--megapixels`` JPEG, each from its own
   address (127.0.0.3, …; ``--one-client`` sends them all from one), while the server's
   resident memory is sampled; its peak (``VmHWM`` of ``/proc/<pid>/status``, reset before the
   phase where the kernel allows) is printed with the memory before the phase.

The server runs on the CPU with its default backend unless ``--server-arg`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "assets" / "photos" / "kodim23.jpg"
OTHER = "127.0.0.2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", type=Path, default=REPO, help="checkout whose server runs")
    p.add_argument("--models", type=Path, default=REPO / "checkpoints", help="models folder")
    p.add_argument("--style", default="starry_night", help="style of every request")
    p.add_argument("--normal", type=int, default=5, help="normal requests per phase")
    p.add_argument("--stalled", type=int, default=32, help="stalled uploads")
    p.add_argument("--watch", type=float, default=35.0, help="seconds to watch stalled uploads")
    p.add_argument("--big", type=int, default=10, help="concurrent big uploads")
    p.add_argument("--megapixels", type=float, default=39.7, help="size of a big upload")
    p.add_argument("--one-client", action="store_true", help="big uploads from one address")
    p.add_argument("--server-arg", action="append", default=[], help="passed to the server")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# The server.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args: argparse.Namespace, port: int) -> Iterator[int]:
    """The server process from ``args.code``; yields its pid once /healthz answers."""
    cmd = [sys.executable, "-m", "fast_style.serve", "--port", str(port)]
    cmd += ["--models", str(args.models.resolve()), *args.server_arg]
    log = Path(tempfile.mkdtemp(prefix="fast_style_probe_")) / "server.log"
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=args.code, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"\nserver log: {log}")


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0, needs the right to write clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Clients.


def client(port: int, address: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=600)


def stylize(c: httpx.Client, data: bytes, style: str, name: str) -> tuple[int, float]:
    """Status and seconds of one request."""
    t0 = time.perf_counter()
    res = c.post("/api/stylize", files={"image": (name, data, "image/jpeg")}, data={"style": style})
    return res.status_code, time.perf_counter() - t0


def stalled_upload(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        (
            f"POST /api/stylize HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 1000000\r\n\r\n--b\r\n"
        ).encode()
    )
    s.setblocking(False)
    return s


def watch(stalled: list[socket.socket], seconds: float) -> list[tuple[str, float | None]]:
    """(status, seconds) of each stalled upload's answer, or ("none", None) by the end."""
    t0, out = time.monotonic(), [("none", None)] * len(stalled)
    while time.monotonic() - t0 < seconds and any(t is None for _, t in out):
        for i, s in enumerate(stalled):
            if out[i][1] is None:
                with contextlib.suppress(BlockingIOError):
                    head = s.recv(64)
                    out[i] = (
                        head.split(b" ")[1].decode() if head else "closed",
                        time.monotonic() - t0,
                    )
        time.sleep(0.05)
    return out


def big_jpeg(megapixels: float) -> bytes:
    """A textured 4:3 JPEG of about ``megapixels`` (cached in the temp folder)."""
    h = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = int(megapixels * 1e6 / h)
    path = Path(tempfile.gettempdir()) / f"fast_style_probe_{w}x{h}.jpg"
    if not path.is_file():
        rng = np.random.default_rng(0)
        small = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
        small.resize((w, h), Image.Resampling.BILINEAR).save(path, "JPEG", quality=90)
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Phases.


def latencies(rows: list[tuple[int, float]]) -> str:
    codes = ",".join(sorted({str(c) for c, _ in rows}))
    times = [t for _, t in rows]
    return f"{codes} | {statistics.median(times):.3f} | {max(times):.3f}"


def phase_normal(port: int, args: argparse.Namespace, photo: bytes) -> list[tuple[int, float]]:
    with client(port, OTHER) as c:
        return [stylize(c, photo, args.style, "kodim23.jpg") for _ in range(args.normal)]


def phase_big(pid: int, port: int, args: argparse.Namespace) -> dict:
    data = big_jpeg(args.megapixels)
    before = memory(pid)["VmRSS"]
    reset = reset_peak(pid)
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(memory(pid)["VmRSS"])
            time.sleep(0.02)

    def one(i: int) -> tuple[int, float]:
        with client(port, OTHER if args.one_client else f"127.0.0.{3 + i}") as c:
            return stylize(c, data, args.style, "big.jpg")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.big) as pool:
        rows = list(pool.map(one, range(args.big)))
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    hwm = memory(pid)["VmHWM"]
    return {
        "rows": rows,
        "before": before,
        "sampled": max(peak),
        "hwm": hwm,
        "reset": reset,
        "wall": wall,
        "bytes": len(data),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photo, port = PHOTO.read_bytes(), free_port()
    with server(args, port) as pid:
        with client(port, OTHER) as c:
            stylize(c, photo, args.style, "warmup.jpg")  # loads the model
        unloaded = phase_normal(port, args, photo)
        stalled = [stalled_upload(port) for _ in range(args.stalled)]
        time.sleep(1.0)
        with client(port, OTHER) as c:
            in_flight = c.get("/healthz").json()["in_flight"]
        loaded = phase_normal(port, args, photo)
        answers = watch(stalled, args.watch)
        for s in stalled:
            s.close()
        big = phase_big(pid, port, args)

    print(
        f"\nserver code: {args.code}, models: {args.models}, style: {args.style}, "
        f"args: {' '.join(args.server_arg) or '(defaults)'}\n"
    )
    print("| phase | statuses | median s | max s |\n| --- | --- | --- | --- |")
    print(f"| unloaded, {args.normal} requests from {OTHER} | {latencies(unloaded)} |")
    print(
        f"| with {args.stalled} stalled uploads open ({in_flight} admitted) | {latencies(loaded)} |"
    )
    by_status: dict[str, list[float | None]] = {}
    for status, t in answers:
        by_status.setdefault(status, []).append(t)
    print("\n| stalled uploads answered | count | first s | last s |\n| --- | --- | --- | --- |")
    for status, times in sorted(by_status.items()):
        known = [t for t in times if t is not None]
        span = f"{min(known):.1f} | {max(known):.1f}" if known else f"- | > {args.watch:g}"
        print(f"| {status} | {len(times)} | {span} |")
    mb = 2**20
    print(f"\n| {args.big} × {args.megapixels} MP JPEG ({big['bytes'] / mb:.1f} MB) | value |")
    print("| --- | --- |")
    print(f"| statuses, median s, max s | {latencies(big['rows'])} |")
    print(f"| wall time | {big['wall']:.1f} s |")
    print(f"| RSS before | {big['before'] / mb:.0f} MB |")
    print(f"| peak RSS, sampled every 20 ms | {big['sampled'] / mb:.0f} MB |")
    hwm = "since the phase began" if big["reset"] else "since the server started"
    print(f"| peak RSS, VmHWM ({hwm}) | {big['hwm'] / mb:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
