"""The ``onnxruntime`` backend: the ONNX export of ``DeployNet``, cached on disk, run on CPU.

A multi-style model's export takes the style weights as its ``style`` input (B, S): one cached
file serves every style and mix. Per-pixel style maps (a painted mask) are not an ONNX input;
``Stylizer`` runs those in PyTorch (``fast_style.infer.stylizer``)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_style.core.imaging import crop_to, pad_to_multiple
from fast_style.core.network import MIN_SIZE, SIZE_MULTIPLE, TransformerNet
from fast_style.infer.deploy import NORM_INPUT_NAME, STYLE_INPUT_NAME

_ORT_AVAILABLE: bool | None = None


def onnxruntime_available() -> bool:
    """True when onnxruntime (and the onnx exporter's dependencies) can be imported."""
    global _ORT_AVAILABLE
    if _ORT_AVAILABLE is None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            _ORT_AVAILABLE = True
        except ImportError:
            _ORT_AVAILABLE = False
    return _ORT_AVAILABLE


# --------------------------------------------------------------------------------------------
# Backends.


def onnx_cache_dir() -> Path:
    """``$FAST_STYLE_CACHE`` or ``~/.cache/fast_style``, sub-folder ``onnx``."""
    root = os.environ.get("FAST_STYLE_CACHE") or Path.home() / ".cache" / "fast_style"
    return Path(root) / "onnx"


def hash_weights(h: hashlib._Hash, net: TransformerNet) -> None:
    """Feed every weight of ``net`` (names and float32 values, in name order) into ``h``."""
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())


def cached_onnx(net: TransformerNet, refresh: bool = False, frozen_norms: bool = False) -> bytes:
    """The ONNX export of ``net``, cached on disk by a hash of its weights and the exporter's
    versions (exporting takes 1-2 s on a small CPU; loading the cached file, milliseconds).
    An unwritable cache is skipped silently."""
    from fast_style import __version__
    from fast_style.infer.deploy import DEPLOY_VERSION
    from fast_style.infer.export import to_onnx_bytes

    key = f"{__version__}/{DEPLOY_VERSION}/{torch.__version__}/{frozen_norms}"
    h = hashlib.sha256(key.encode())
    hash_weights(h, net)
    path = onnx_cache_dir() / f"{h.hexdigest()[:32]}.onnx"
    if not refresh:
        try:
            return path.read_bytes()
        except OSError:
            pass
    data = to_onnx_bytes(net, frozen_norms=frozen_norms)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: concurrent processes never read a half-written file
    except OSError:
        pass
    return data


class OrtRunner:
    """The network exported to ONNX (``DeployNet``, or ``FrozenNormNet`` with ``frozen_norms``
    for the tiles of tiled inference), run by ONNX Runtime on CPU.

    ``runner(x, norm_affine=None, style=None)``: ``x`` (B, 3, H, W) in [0, 1] → same shape.
    ``style`` (multi-style, not frozen): None (the first style), (S,) or (1 | B, S) weights,
    used as given. A one-style or frozen export has no style input and ignores ``style``
    (``norm_affine`` has the style folded in: ``tiling.pack_norm_affine``)."""

    def __init__(self, net: TransformerNet, threads: int | None = None, frozen_norms: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = ["CPUExecutionProvider"]
        try:
            data = self._model_bytes(net, frozen_norms, refresh=False)
            self.session = self._open(ort.InferenceSession(data, opts, providers=providers))
        except Exception:  # a damaged cache file (ORT raises its own exception types)
            data = self._model_bytes(net, frozen_norms, refresh=True)
            self.session = self._open(ort.InferenceSession(data, opts, providers=providers))
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        # S of the style input (B, S), 0 when the export has none
        self.num_styles = next((int(i.shape[1]) for i in inputs if i.name == STYLE_INPUT_NAME), 0)

    def _model_bytes(self, net: TransformerNet, frozen_norms: bool, refresh: bool) -> bytes:
        """The serialised model this runner runs (subclasses: another cached form)."""
        return cached_onnx(net, refresh=refresh, frozen_norms=frozen_norms)

    def _open(self, session: Any) -> Any:
        """Check a new session (subclasses raise on a cached model they cannot use: it is
        then rebuilt once) and return it."""
        return session

    def _style_feed(self, style: torch.Tensor | None, batch: int) -> np.ndarray:
        """The ``style`` input (B, S) float32 for ``style`` None, (S,) or (1 | B, S)."""
        s = self.num_styles
        if style is None:
            style = torch.eye(s)[:1]  # the first style, as TransformerNet's default
        if not isinstance(style, torch.Tensor) or style.dim() not in (1, 2):
            shape = tuple(style.shape) if isinstance(style, torch.Tensor) else type(style).__name__
            raise ValueError(
                f"the ONNX export takes style weights (S,) or (B, S), got {shape} (per-pixel "
                "style maps run in PyTorch)"
            )
        style = style.detach().float().cpu().reshape(-1, style.shape[-1])
        if style.shape[1] != s or style.shape[0] not in (1, batch):
            raise ValueError(f"style must be ({batch}, {s}) or (1, {s}), got {tuple(style.shape)}")
        return np.ascontiguousarray(style.expand(batch, s).numpy())

    def __call__(
        self,
        x: torch.Tensor,
        norm_affine: torch.Tensor | None = None,
        style: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Pad here (one source: imaging.pad_to_multiple, also for tiny images) so the graph
        # always sees H, W multiples of 4 and ≥ 8.
        xp, size = pad_to_multiple(x.float().cpu(), SIZE_MULTIPLE, MIN_SIZE)
        feed = {self.input_name: np.ascontiguousarray(xp.numpy())}
        if norm_affine is not None:
            feed[NORM_INPUT_NAME] = norm_affine.float().cpu().numpy()
        if self.num_styles:
            feed[STYLE_INPUT_NAME] = self._style_feed(style, xp.shape[0])
        y = self.session.run(None, feed)[0]
        return crop_to(torch.from_numpy(y), size).to(x.device)
