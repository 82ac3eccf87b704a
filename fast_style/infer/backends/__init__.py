"""Inference backends: how the network runs (``Stylizer``'s ``backend=``).

* ``eager``: PyTorch (``DeployNet`` on CPU, the plain network on GPUs);
* ``compile``: ``torch.compile`` of the same;
* ``onnxruntime``: the ONNX export run by ONNX Runtime on CPU (``ort``);
* ``fused``: PyTorch's convolutions plus fused C kernels for the layers between them (``fused``);
* ``ort-int8``: the ONNX export statically quantised to int8, run by ONNX Runtime on CPU
  (``ort_int8``, docs/int8.md); opt-in, not exactly the fp32 output;
* ``auto``: on CPU ``ort-int8`` for a model whose metadata records a measured int8 PSNR against
  fp32 of at least 38 dB (``ort_int8.int8_measured_ok``) when ONNX Runtime is installed; else
  ``fused`` when a C compiler can build it, else ``onnxruntime`` when it is installed, else
  ``eager`` (the fastest first, docs/benchmarks.md); on GPUs ``eager``.

Every backend takes a multi-style model's style weights; painted two-style masks run in every
backend but the ONNX Runtime ones, whose export has no per-pixel input (``Stylizer`` runs those
in PyTorch; ``fast_style.infer.stylizer``).
"""

from __future__ import annotations

from typing import Any

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "fused", "ort-int8")
CPU_ONLY = ("onnxruntime", "fused", "ort-int8")


def pick_backend(backend: str, device_type: str, meta: dict[str, Any] | None = None) -> str:
    """The backend that ``backend`` means on a device of ``device_type`` (``auto`` resolved,
    with the model's metadata ``meta`` for its int8 rule); ``ValueError`` with a one-line
    reason when it cannot run there."""
    from fast_style.infer.backends.fused import fused_available, unavailable_reason
    from fast_style.infer.backends.ort import onnxruntime_available
    from fast_style.infer.backends.ort_int8 import INSTALL_HINT, int8_available, int8_measured_ok

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    cpu = device_type == "cpu"
    if backend == "auto":
        if cpu and int8_measured_ok(meta) and int8_available():
            return "ort-int8"
        if cpu and fused_available():
            return "fused"
        return "onnxruntime" if cpu and onnxruntime_available() else "eager"
    if backend in CPU_ONLY and not cpu:
        raise ValueError(f"backend {backend!r} runs on CPU only (use --device cpu)")
    if backend == "fused" and not fused_available():
        raise ValueError(f"backend 'fused' is unavailable here: {unavailable_reason()}")
    if backend == "onnxruntime" and not onnxruntime_available():
        raise ValueError("backend 'onnxruntime' needs: pip install 'fast_style[export]'")
    if backend == "ort-int8" and not int8_available():
        raise ValueError(INSTALL_HINT)
    return backend
