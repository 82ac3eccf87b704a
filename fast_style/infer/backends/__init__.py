"""Inference backends: how the network runs (``Stylizer``'s ``backend=``).

* ``eager``: PyTorch (``DeployNet`` on CPU, the plain network on GPUs);
* ``compile``: ``torch.compile`` of the same;
* ``onnxruntime``: the ONNX export run by ONNX Runtime on CPU (``ort``);
* ``fused``: PyTorch's convolutions plus fused C kernels for the layers between them (``fused``);
* ``auto``: on CPU ``fused`` when a C compiler can build it, else ``onnxruntime`` when it is
  installed, else ``eager`` (the fastest first, docs/benchmarks.md); on GPUs ``eager``.
"""

BACKENDS = ("auto", "eager", "compile", "onnxruntime", "fused")
