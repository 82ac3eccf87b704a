"""Video: stylize clips with their sound, frame by frame, streaming; measure flicker (E_warp).

* ``stylize_video(src, dst, fn)``: decode → batches → ``fn`` → encode, in three overlapping
  stages, timestamps and sound kept (``pipeline``);
* ``is_video``, ``probe`` / ``VideoInfo``, ``read_clip``, ``iter_frames`` (``io``);
  ``encoder_settings`` and ``ClipWriter`` (``encode``);
* synthetic camera-path clips with exact flow (``clips``), the warping error of Lai et al. 2018
  (``metrics``) and its report (``evaluate``);
* ``FlowStabilizer`` (``stabilize``, needs OpenCV): any frame function's output blended with
  the previous one along the input's motion, against flicker.

The network is any callable ``(B, 3, H, W) float [0, 1] → the same``: the package imports only
``fast_style.core`` (and ``fast_style.infer`` lazily, in ``evaluate.main``).
"""

from fast_style.video.encode import ClipWriter, EncoderSettings, encoder_settings
from fast_style.video.io import (
    VIDEO_EXTENSIONS,
    AudioInfo,
    AudioPacket,
    Frame,
    ReadStats,
    VideoError,
    VideoInfo,
    is_video,
    iter_frames,
    probe,
    read_clip,
)
from fast_style.video.pipeline import FrameFn, VideoReport, stylize_video

__all__ = [
    "VIDEO_EXTENSIONS",
    "AudioInfo",
    "AudioPacket",
    "ClipWriter",
    "EncoderSettings",
    "Frame",
    "FrameFn",
    "ReadStats",
    "VideoError",
    "VideoInfo",
    "VideoReport",
    "encoder_settings",
    "is_video",
    "iter_frames",
    "probe",
    "read_clip",
    "stylize_video",
]
