"""ONNX Runtime Web for the page's "on this device" mode, from the npm registry at build time.

``python scripts/build_web_runtime.py [--dest DIR] [--no-webgpu] [--force]``

Downloads the pinned ``onnxruntime-web`` package tarball with npm's own client
(``npm pack onnxruntime-web@VERSION``: a download, nothing is installed and no package script
runs), checks it against the registry's pinned SHA-512 integrity, and copies only the files the
page loads into ``DEST`` (default ``fast_style/serve/web/vendor/onnxruntime-web``, git-ignored),
with a ``manifest.json`` listing them (version, sizes, SHA-256). The server serves them under
``/ort/`` (``fast_style.serve.app``); at run time nothing comes from a CDN.

* WASM (every browser): ``ort.wasm.min.mjs`` and the SIMD/threads build
  ``ort-wasm-simd-threaded.{mjs,wasm}`` (about 15 MB);
* WebGPU (where ``navigator.gpu`` exists; ``--no-webgpu`` leaves it out):
  ``ort.webgpu.min.mjs`` and ``ort-wasm-simd-threaded.asyncify.{mjs,wasm}`` (about 29 MB).

An up-to-date folder is left alone (so CI builds once); ``--force`` rebuilds. Exit status: 0
done, 3 npm missing or the registry unreachable (the browser tests skip on it), 1 anything else
(a wrong checksum, a missing file in the tarball).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PACKAGE = "onnxruntime-web"
VERSION = "1.31.1"
# ``npm view onnxruntime-web@1.31.1 dist.integrity``: the tarball must match it.
INTEGRITY = (
    "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VX"
    "VVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
)
FILES = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": (
        "ort.webgpu.min.mjs",
        "ort-wasm-simd-threaded.asyncify.mjs",
        "ort-wasm-simd-threaded.asyncify.wasm",
    ),
}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / "fast_style" / "serve" / "web" / "vendor" / "onnxruntime-web"
MANIFEST = "manifest.json"
UNREACHABLE = 3
# npm's error codes for a registry it cannot reach
NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "network",
)


class UnreachableError(RuntimeError):
    """npm is not installed, or the registry cannot be reached."""


def wanted(webgpu: bool = True) -> list[str]:
    """The file names to copy: WASM, and WebGPU unless ``webgpu`` is False."""
    return [*FILES["wasm"], *(FILES["webgpu"] if webgpu else ())]


def up_to_date(dest: Path, names: list[str]) -> bool:
    """True when ``dest`` holds this version's ``names`` with the manifest's sizes."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = manifest.get("files", {})
    return (
        manifest.get("version") == VERSION
        and set(names) <= set(files)
        and all(
            (dest / n).is_file() and (dest / n).stat().st_size == files[n]["bytes"] for n in files
        )
    )


def npm_pack(tmp: Path) -> Path:
    """The package tarball, downloaded by ``npm pack`` into ``tmp`` (npm caches it)."""
    npm = shutil.which("npm")
    if npm is None:
        raise UnreachableError("npm is not installed (Node.js 18 or later brings it)")
    cmd = [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(tmp), "--ignore-scripts"]
    # --json: a parsable error; a registry that does not answer fails within about 2 minutes
    # (npm's own default waits 5 minutes a try), not for ever.
    cmd += ["--json", "--silent", "--fetch-retries", "1", "--fetch-timeout", "60000"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp)
    except subprocess.TimeoutExpired as e:
        raise UnreachableError("npm pack timed out after 180 s (is the registry reachable?)") from e
    if proc.returncode != 0:
        err = _npm_error(proc.stdout, proc.stderr)
        if any(code in err for code in NETWORK_ERRORS):
            raise UnreachableError(f"npm cannot reach the registry: {err}")
        raise RuntimeError(f"npm pack failed ({proc.returncode}): {err}")
    found = sorted(tmp.glob(f"{PACKAGE}-{VERSION}.tgz"))
    if not found:
        raise RuntimeError(f"npm pack wrote no {PACKAGE}-{VERSION}.tgz into {tmp}")
    return found[0]


def _npm_error(stdout: str, stderr: str) -> str:
    """npm's error in one line: ``--json`` prints ``{"error": {"code", "summary"}}``."""
    try:
        error = json.loads(stdout)["error"]
        return f"{error.get('code')}: {error.get('summary')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = (stderr or stdout).strip()
        return text[-2000:] or "no message"


def check_integrity(tarball: Path) -> None:
    """Raise unless the tarball's SHA-512 is the pinned ``INTEGRITY``."""
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if f"sha512-{digest}" != INTEGRITY:
        raise RuntimeError(
            f"{tarball.name}: SHA-512 integrity mismatch (got sha512-{digest}, pinned {INTEGRITY})"
        )


def extract(tarball: Path, names: list[str], dest: Path) -> dict[str, dict[str, object]]:
    """Copy ``package/dist/<name>`` for each of ``names`` into ``dest`` (through a temporary
    folder, swapped in at the end); returns each file's size and SHA-256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ort-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the files from a server run as another user
    files: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in names:
                member = tar.getmember(f"package/dist/{name}")  # KeyError when absent
                src = tar.extractfile(member)
                if src is None or not member.isfile():
                    raise RuntimeError(f"{member.name} is not a regular file")
                data = src.read()
                (staging / name).write_bytes(data)
                files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {
            "package": PACKAGE,
            "version": VERSION,
            "integrity": INTEGRITY,
            "license": "MIT (Copyright (c) Microsoft Corporation; see each file's header)",
            "source": f"npm pack {PACKAGE}@{VERSION}",
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def build(dest: Path = DEFAULT_DEST, webgpu: bool = True, force: bool = False) -> bool:
    """Make ``dest`` hold the runtime files; False when it already did (nothing downloaded)."""
    names = wanted(webgpu)
    if not force and up_to_date(dest, names):
        return False
    with tempfile.TemporaryDirectory(prefix="ort-pack-") as tmp:
        tarball = npm_pack(Path(tmp))
        check_integrity(tarball)
        extract(tarball, names, dest)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(os.environ.get("FAST_STYLE_WEB_RUNTIME") or DEFAULT_DEST),
        help="folder to fill (default: $FAST_STYLE_WEB_RUNTIME, else %(default)s)",
    )
    p.add_argument("--no-webgpu", action="store_true", help="the WASM files only (15 MB)")
    p.add_argument("--force", action="store_true", help="download and copy even if up to date")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        built = build(args.dest, webgpu=not args.no_webgpu, force=args.force)
    except UnreachableError as e:
        print(f"error: {e}", file=sys.stderr)
        return UNREACHABLE
    except (RuntimeError, KeyError, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    manifest = json.loads((args.dest / MANIFEST).read_text())
    mb = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
    what = "built" if built else "up to date"
    print(
        f"{PACKAGE} {VERSION}: {what} in {args.dest} ({len(manifest['files'])} files, {mb:.1f} MB, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
