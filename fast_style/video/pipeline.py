"""Stylize a clip, streaming: decode → batch of frames → ``fn`` → encode, sound remuxed.

Three stages overlap: a thread decodes (PyAV), the calling thread runs ``fn`` (the network, which
releases the GIL), a thread encodes and muxes. A frame function with a ``head`` and a ``tail``
(``Staged``: the network, then a sequential step such as the flow blend) gets a fourth stage: the
tail runs in its own thread on one batch while the head runs on the next, so the blend's
single-threaded parts no longer leave a core idle. Bounded queues between them keep memory flat
whatever the clip's length: at most a few batches of frames are alive at once. The output is
written to a temporary file beside ``dst`` and renamed only when complete
(``fast_style.core.fileio.atomic_write``): Ctrl-C, a crash or an error never leaves a
half-written file under ``dst``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from fast_style.core.fileio import atomic_write
from fast_style.core.imaging import pil_to_tensor, tensor_to_pil
from fast_style.video.encode import (
    ClipWriter,
    EncoderSettings,
    check_audio_fits,
    encoder_settings,
)
from fast_style.video.io import (
    Frame,
    ReadStats,
    VideoError,
    VideoInfo,
    open_input,
    probe,
    read_clip,
)

FrameFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) float [0, 1] → the same
OnFrame = Callable[[int, "int | None"], None]  # (frames written, frames expected or None)
_POLL = 0.1  # seconds a blocked stage waits before checking whether the run was cancelled
_JOIN = 30.0  # seconds to wait for a stage to notice a cancellation
_END = object()  # end of the stream, through every queue
QUEUE_BYTES = 256 << 20  # frames buffered per queue, at most (but at least two batches)
TAIL_THREADS: int | None = None  # intra-op threads of a staged fn's tail (None: the caller's)
IO_NICE = 10  # nice value of the decode and encode threads (scripts/bench_video.py, docs/video.md)


@runtime_checkable
class Staged(Protocol):
    """A frame function in two parts: ``fn(x) == tail(x, head(x))``. ``head`` (B, 3, H, W) in
    [0, 1] → the same shape; ``tail(x, y)`` → the frames as ``fn`` returns them, called once
    per batch in the clip's order."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def head(self, x: torch.Tensor) -> torch.Tensor: ...
    def tail(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


class _CancelledError(Exception):
    """Raised in a stage blocked on a queue when another stage failed or was interrupted."""


class _Channel:
    """A bounded queue between two stages whose blocking calls give up on cancellation."""

    def __init__(self, size: int, cancel: threading.Event) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=size)
        self._cancel = cancel

    def put(self, item: Any) -> None:
        while True:
            if self._cancel.is_set():
                raise _CancelledError
            with contextlib.suppress(queue.Full):
                self._q.put(item, timeout=_POLL)
                return

    def get(self) -> Any:
        while True:
            if self._cancel.is_set():
                raise _CancelledError
            with contextlib.suppress(queue.Empty):
                return self._q.get(timeout=_POLL)


def _lower_priority() -> None:
    """Give the calling thread (and the codec threads it starts, which inherit it) a lower CPU
    priority than the network's: on a machine the network keeps busy, decoding and encoding then
    fill the gaps instead of stalling the network's parallel regions. Linux only, where the
    nice value is per thread (elsewhere ``setpriority`` would lower the whole process)."""
    mode = os.environ.get("FAST_STYLE_VIDEO_NICE", str(IO_NICE))
    if not sys.platform.startswith("linux") or mode == "0":
        return
    with contextlib.suppress(OSError):
        if mode == "idle":
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(mode))


class _Stage(threading.Thread):
    """A pipeline thread: its exception is kept for the caller, and cancels the run."""

    def __init__(
        self, name: str, target: Callable[[], None], cancel: threading.Event, io: bool = True
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._work, self._cancel, self._io = target, cancel, io
        self.error: BaseException | None = None

    def run(self) -> None:
        if self._io:  # decoding and encoding yield to the compute stages
            _lower_priority()
        try:
            self._work()
        except _CancelledError:
            pass
        except BaseException as e:
            self.error = e
            self._cancel.set()


@dataclass
class _Decoded:
    """One decoded frame as the network takes it: ``x`` (3, h, w) float in [0, 1]."""

    x: torch.Tensor
    pts: int | None


@dataclass
class _Styled:
    """One stylized frame on its way to the encoder: ``y`` (3, h, w) in [0, 1]."""

    y: torch.Tensor
    pts: int | None


@dataclass
class VideoReport:
    """What ``stylize_video`` did. ``frames_lost``: frames of the input that could not be
    decoded (from the container's frame count; where it keeps none, estimated from the
    duration, ``lost_estimated``). ``seconds``: wall time, decoding and encoding included."""

    src: Path
    dst: Path
    frames_written: int
    frames_lost: int
    frames_expected: int | None
    seconds: float
    audio_copied: int
    lost_estimated: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames written per second of wall time."""
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the user, e.g. ``out.mp4: 300 frames in 120.0 s (2.50 frames/s); …``."""
        parts = [
            f"{self.dst}: {self.frames_written} frames in {self.seconds:.1f} s "
            f"({self.fps:.2f} frames/s)"
        ]
        if self.frames_lost:
            about = "about " if self.lost_estimated else ""
            parts.append(f"{about}{self.frames_lost} frames lost to a damaged input")
        if self.audio_copied:
            s = "s" if self.audio_copied > 1 else ""
            parts.append(f"{self.audio_copied} audio stream{s} copied")
        return "; ".join(parts + self.notes)


class _Progress:
    """A tqdm bar of frames (rate and ETA) on a terminal, plus the ``on_frame`` callback."""

    def __init__(self, total: int | None, show: bool, on_frame: OnFrame | None, name: str):
        self.total, self.done, self._on_frame = total, 0, on_frame
        self._bar = tqdm(
            total=total, unit="frame", desc=name, disable=not (show and sys.stderr.isatty())
        )

    def step(self) -> None:
        self.done += 1
        self._bar.update(1)
        if self._on_frame is not None:
            self._on_frame(self.done, self.total)

    def close(self) -> None:
        self._bar.close()


@dataclass
class _Batch:
    """A batch between ``head`` and ``tail``: its frames ``x`` and ``head``'s output ``y``,
    (B, 3, H, W) each, and ``items``, its frames and the audio packets between them in order."""

    x: torch.Tensor | None  # None: audio packets alone (after the last frame)
    y: torch.Tensor | None
    items: list


def _check(y: Any, x: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x.shape):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"the frame function returned {got} for a batch of {tuple(x.shape)}")


def _head(fn: Callable[[torch.Tensor], torch.Tensor], pending: list) -> _Batch:
    """``fn`` (the whole frame function, or a ``Staged`` one's head) on the frames among
    ``pending`` (frames and audio packets, in file order)."""
    x = torch.stack([p.x for p in pending if isinstance(p, _Decoded)])
    with torch.inference_mode():
        y = fn(x)
    _check(y, x)
    return _Batch(x, y, pending)


def _finish(batch: _Batch, tail: Callable[..., torch.Tensor] | None) -> list:
    """The batch's items in order, its frames replaced by their stylized ``_Styled`` (``tail``
    applied first, where given)."""
    if batch.x is None or batch.y is None:
        return batch.items
    y = batch.y
    if tail is not None:
        with torch.inference_mode():
            y = tail(batch.x, y)
        _check(y, batch.x)
    frames = iter(y)
    return [_Styled(next(frames), p.pts) if isinstance(p, _Decoded) else p for p in batch.items]


def _network_stage(fn: FrameFn, inbox: _Channel, outbox: _Channel, batch: int) -> None:
    """The calling thread's part: gather ``batch`` frames (keeping the audio packets between
    them in order), stylize them (a ``Staged`` fn: its head, the batch passed on whole to the
    tail's stage), pass everything on."""
    head: Callable[[torch.Tensor], torch.Tensor] = fn.head if isinstance(fn, Staged) else fn
    staged = head is not fn

    def send(pending: list, frames: int) -> None:
        done = _head(head, pending) if frames else _Batch(None, None, pending)
        for out in [done] if staged else _finish(done, None):
            outbox.put(out)

    pending: list = []
    n = 0
    while (item := inbox.get()) is not _END:
        pending.append(item)
        n += isinstance(item, _Decoded)
        if n == batch:
            send(pending, n)
            pending, n = [], 0
    if pending:
        send(pending, n)
    outbox.put(_END)


def _tail_stage(
    tail: Callable[..., torch.Tensor], inbox: _Channel, outbox: _Channel, threads: int
) -> None:
    # As many intra-op threads as the network's (a per-thread setting): on two cores the blend
    # with two threads beside the network's two ran faster end to end than with one
    # (docs/video.md, Speed).
    torch.set_num_threads(threads)
    while (item := inbox.get()) is not _END:
        for out in _finish(item, tail):
            outbox.put(out)
    outbox.put(_END)


def _read_stage(job: _Job, out: _Channel) -> None:
    """Decode, and convert each frame for the network here, off the network's thread."""
    for item in read_clip(job.info, audio=job.audio, max_size=job.max_size, stats=job.stats):
        out.put(_Decoded(pil_to_tensor(item.image), item.pts) if isinstance(item, Frame) else item)
    out.put(_END)


def _queue_size(info: VideoInfo, batch: int) -> int:
    """Items per queue: 2 to 4 batches of frames, as many as ``QUEUE_BYTES`` of float frames
    allow, plus room for the audio packets between them (small)."""
    frame_bytes = 12 * info.width * info.height  # float32 RGB
    frames = min(4 * batch, max(2 * batch, QUEUE_BYTES // frame_bytes))
    return frames + 16


def _write_stage(writer: ClipWriter, inbox: _Channel, progress: _Progress) -> None:
    while (item := inbox.get()) is not _END:
        if isinstance(item, _Styled):
            writer.write_frame(tensor_to_pil(item.y), item.pts)
            progress.step()
        else:
            writer.write_audio(item)
    if writer.frames:  # an empty clip is refused by the caller, not finished
        writer.close()


def _lost(info: VideoInfo, stats: ReadStats, written: int) -> tuple[int, bool]:
    """(frames lost, whether estimated): the container's count minus what was written; where
    the container keeps no count, the frames between the last decoded one and the video's end."""
    if info.frames:
        return max(info.frames - written, stats.errors), False
    if info.duration and info.fps and stats.last_time is not None:
        step = 1 / float(info.fps)
        gap = info.duration - stats.last_time - step
        # Beyond 1.5 frames of gap, a tail is missing (a healthy clip ends one frame after its
        # last timestamp); below, rounding and variable frame rates are noise.
        missing = round(gap / step) if gap > 1.5 * step else 0
        return max(stats.errors, missing), missing > stats.errors
    return stats.errors, False


def _audio_streams(info: VideoInfo, gif: bool, audio: bool, notes: list[str]) -> list[int]:
    if audio and not gif:
        return [a.index for a in info.audio]
    if not info.audio:
        return []
    n = len(info.audio)
    why = "GIF holds no sound" if gif else "sound not wanted"
    notes.append(f"{why}: {n} audio stream{'s' if n > 1 else ''} dropped")
    return []


@dataclass
class _Job:
    """One ``stylize_video`` run: what the stages share."""

    info: VideoInfo
    fn: FrameFn
    batch: int
    max_size: int | None
    progress: _Progress
    audio: bool  # remux the audio packets (else they are not even demuxed)
    stats: ReadStats = field(default_factory=ReadStats)


def _run(job: _Job, writer: ClipWriter) -> None:
    """Run the stages to the end; any failure or Ctrl-C cancels the others and is raised in
    the calling thread once they have stopped."""
    cancel = threading.Event()
    # Bounded: a few batches in flight, so memory stays flat whatever the clip's length.
    decoded = _Channel(_queue_size(job.info, job.batch), cancel)
    styled = _Channel(_queue_size(job.info, job.batch), cancel)
    stages = [
        _Stage("fs-video-decode", lambda: _read_stage(job, decoded), cancel),
        _Stage("fs-video-encode", lambda: _write_stage(writer, styled, job.progress), cancel),
    ]
    head_out = styled
    if isinstance(job.fn, Staged):
        head_out = _Channel(2, cancel)  # batches: one being finished, one waiting
        tail, threads = job.fn.tail, TAIL_THREADS or torch.get_num_threads()
        stages.append(
            _Stage(
                "fs-video-tail",
                lambda: _tail_stage(tail, head_out, styled, threads),
                cancel,
                io=False,
            )
        )
    for stage in stages:
        stage.start()
    try:
        _network_stage(job.fn, decoded, head_out, job.batch)
        stages[1].join()
    except _CancelledError:
        pass
    finally:
        cancel.set()  # a no-op once every stage has ended; else it stops them
        for stage in stages:
            stage.join(_JOIN)
    for stage in stages:
        if stage.error is not None:
            raise stage.error


def _write(job: _Job, dst: Path, settings: EncoderSettings, keep: list[int]) -> None:
    """Run ``job`` into a temporary file beside ``dst``, renamed onto ``dst`` when complete."""
    info = job.info
    with atomic_write(dst) as tmp, open_input(info.path) as templates:
        w = ClipWriter(
            tmp,
            settings,
            size=(info.width, info.height),
            time_base=info.time_base,
            fps=info.fps,
            audio=[templates.streams[i] for i in keep],
            name=str(dst),
        )
        try:
            _run(job, w)
        except BaseException:
            w.abort()
            raise
        if w.frames == 0:
            w.abort()
            why = job.stats.stopped or "no video frames"
            raise VideoError(f"{info.path}: no frame could be decoded ({why})")


def stylize_video(
    src: str | Path,
    dst: str | Path,
    fn: FrameFn,
    *,
    batch: int = 4,
    crf: int | None = None,
    codec: str | None = None,
    pix_fmt: str | None = None,
    max_size: int | None = None,
    audio: bool = True,
    progress: bool = True,
    on_frame: OnFrame | None = None,
) -> VideoReport:
    """Stylize the clip ``src`` into ``dst``, frame by frame, streaming.

    ``fn`` maps a batch (B, 3, H, W) float in [0, 1], upright, to the same shape (e.g.
    ``Stylizer.stylize_tensor``). Every frame keeps its timestamp, the output is exactly the
    input's displayed W×H (``max_size`` caps the long side ``fn`` sees; its result is scaled
    back), every audio stream is remuxed unchanged (``audio=False`` drops them). The codec
    follows ``dst``'s extension; ``codec``, ``crf``, ``pix_fmt`` override (``encoder_settings``).
    ``progress``: a frame bar on a terminal and the summary line on stderr. ``on_frame(done,
    total)`` after each frame written. Raises ``VideoError`` (one line) for an unreadable input
    or an impossible output; a damaged input yields what decodes, its losses in the report.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    src, dst = Path(src), Path(dst)
    info = probe(src)
    settings = encoder_settings(dst, info.width, info.height, codec=codec, crf=crf, pix_fmt=pix_fmt)
    notes: list[str] = []
    keep = _audio_streams(info, settings.codec == "gif", audio, notes)
    for a in info.audio:
        if a.index in keep:  # before anything is written
            check_audio_fits(dst, settings.format, a.codec)
    t0 = time.perf_counter()
    bar = _Progress(info.frames_estimate, progress, on_frame, src.name)
    job = _Job(info, fn, batch, max_size, bar, audio=bool(keep))
    try:
        _write(job, dst, settings, keep)
    finally:
        job.progress.close()
    written = job.progress.done
    lost, estimated = _lost(info, job.stats, written)
    seconds = time.perf_counter() - t0
    report = VideoReport(
        src, dst, written, lost, info.frames_estimate, seconds, len(keep), estimated, notes
    )
    if progress:
        print(report.summary(), file=sys.stderr)
    return report
