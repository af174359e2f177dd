"""Nodes: read a video file into frames, and write frames to a video file (streamed through PyAV)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import Field

from reelgraph import InputPath, NodeInputError, OutputPath, RunContext, node

from .static_checks import input_file_exists, writable_video
from .threads import configure_threads
from .values import Video
from .video_io import VideoDecodeError, read_video, write_video


class LoadedVideo(NamedTuple):
    """A decoded clip and its facts."""

    video: Video
    fps: float
    frames: int


def _file_fingerprint(values: dict[str, Any], ctx: RunContext) -> Any:
    path = values["path"]
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _report(ctx: RunContext) -> Any:
    return lambda i, n: ctx.progress(i, n)


@node("load_video", category="video", fingerprint=_file_fingerprint, check=input_file_exists("path"))
def load_video(
    path: InputPath,
    ctx: RunContext,
    start: Annotated[int, Field(ge=0)] = 0,
    max_frames: Annotated[int, Field(ge=1)] | None = None,
    every_nth: Annotated[int, Field(ge=1)] = 1,
    height: Annotated[int, Field(ge=1)] | None = None,
    width: Annotated[int, Field(ge=1)] | None = None,
) -> LoadedVideo:
    """Decode a video file into float frames ``[F, C, H, W]`` in [0, 1], streaming frame by frame.

    Memory is checked against ``--max-memory`` before decoding, for the frames the container announces,
    and again as frames arrive, so streams that announce no frame count (``.mkv``, ``.webm``, ``.ts``) are
    refused (``too_large``) when they outgrow it. A ``reelgraph-crop`` tag that does not fit the frames
    (see ``save_video``) is ignored.

    Args:
        path: the video file, relative to the workflow's folder.
        start: index of the first frame kept.
        max_frames: keep at most this many frames (all when empty).
        every_nth: keep every n-th frame (the fps output is divided accordingly).
        height: resize frames to this height (give one of height/width to keep the aspect ratio).
        width: resize frames to this width.
    """
    configure_threads()
    try:
        video = read_video(path, start=start, max_frames=max_frames, every_nth=every_nth, height=height,
                           width=width, progress=_report(ctx),
                           reserve=lambda nbytes: ctx.check_memory(nbytes, "decoding this clip", input="max_frames"))
    except FileNotFoundError as exc:
        raise NodeInputError(f"video file {str(path)!r} does not exist", "path", "file_not_found") from exc
    except VideoDecodeError as exc:
        raise NodeInputError(str(exc), input="path", code="video_decode_failed") from exc
    return LoadedVideo(video, video.fps, video.num_frames)


@node("save_video", category="video", output="path", side_effects=True, check=writable_video)
def save_video(
    video: Video,
    ctx: RunContext,
    path: OutputPath = Path("video.mp4"),
    fps: Annotated[float, Field(gt=0, le=1000)] | None = None,
    crf: Annotated[int, Field(ge=0, le=51)] = 18,
) -> Path:
    """Write frames to ``.mp4`` (H.264), ``.mkv`` (lossless FFV1) or ``.gif``, atomically: a file appears
    whole or not at all.

    An existing file is never replaced (unless the run allows overwriting): the video goes to
    ``name-1.mp4``, ``name-2.mp4``, ... instead, and the ``path`` output says where.

    Which to pick: ``.mp4`` at ``crf`` 1-51 is yuv420p, which every player and browser plays (odd frame sizes
    are padded to even and cropped back by ``load_video``). ``.mp4`` at ``crf=0`` is lossless H.264 4:4:4
    (about 52 dB PSNR after the 8-bit colour conversion, on any content): ffmpeg, VLC and mpv play it, most
    browsers and QuickTime do not. ``.mkv`` is FFV1 in RGB, bit-exact through ``load_video`` (ffmpeg, VLC,
    mpv; not browsers). ``.gif`` has 256 colours.

    Args:
        video: the frames to write.
        path: the output file (``.mp4``, ``.mkv`` or ``.gif``); relative paths land under the run's output
            folder (``--out``).
        fps: frames per second (default: the video's own).
        crf: ``.mp4`` quality: 0 is lossless (H.264 4:4:4), 1 to 51 lossy yuv420p; 18 is visually
            near-lossless. Ignored for ``.mkv`` (always lossless) and ``.gif``.
    """
    if path.suffix.lower() not in (".mp4", ".mkv", ".gif"):
        raise NodeInputError(f"cannot write {path.suffix or 'extension-less'} files; use .mp4, .mkv or .gif", "path")
    target = ctx.claim_output(path, "path")
    return write_video(video, target, fps=fps, crf=crf, progress=_report(ctx))
