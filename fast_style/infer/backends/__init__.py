"""Inference backends: how the network runs (``Stylizer``'s ``backend=``).

* ``eager``: PyTorch (``DeployNet`` on CPU, the plain network on GPUs);
* ``compile``: ``torch.compile`` of the same;
* ``onnxruntime``: the ONNX export run by ONNX Runtime on CPU (``ort``);
* ``fused``: PyTorch's convolutions plus fused C kernels for the layers between them (``fused``);
* ``auto``: on CPU ``fused`` when a C compiler can build it, else ``onnxruntime`` when it is
  installed, else ``eager`` (the fastest first, docs/benchmarks.md); on GPUs ``eager``.

Every backend takes a multi-style model's style weights; painted two-style masks run in every
backend but ONNX Runtime, whose export has no per-pixel input (``Stylizer`` runs those in
PyTorch; ``fast_style.infer.stylizer``).
"""

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "fused")


def pick_backend(backend: str, device_type: str) -> str:
    """The backend that ``backend`` means on a device of ``device_type`` (``auto`` resolved);
    ``ValueError`` with a one-line reason when it cannot run there."""
    from fast_style.infer.backends.fused import fused_available, unavailable_reason
    from fast_style.infer.backends.ort import onnxruntime_available

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    cpu = device_type == "cpu"
    if backend == "auto":
        if cpu and fused_available():
            return "fused"
        return "onnxruntime" if cpu and onnxruntime_available() else "eager"
    if backend in ("fused", "onnxruntime") and not cpu:
        raise ValueError(f"backend {backend!r} runs on CPU only (use --device cpu)")
    if backend == "fused" and not fused_available():
        raise ValueError(f"backend 'fused' is unavailable here: {unavailable_reason()}")
    if backend == "onnxruntime" and not onnxruntime_available():
        raise ValueError("backend 'onnxruntime' needs: pip install 'fast_style[export]'")
    return backend
