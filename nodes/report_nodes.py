"""Nodes: a contact sheet of a clip (PNG), and an evaluation report (``report.json`` + ``report.html``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import Field

from reelgraph import InputPath, NodeInputError, OutputPath, RunContext, node
from reelgraph.paths import PathNotAllowed

from . import report
from .metrics import Metric
from .values import Video

Title = Annotated[str, Field(max_length=500)]


def _check_suffix(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise NodeInputError(f"cannot write {path.suffix or 'extension-less'} files here; use "
                             f"{' or '.join(suffixes)}", input="path")


class _RunClaims:
    """The report's file names, claimed through the engine (sandboxed, atomic, no replacing inputs)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def claim(self, path: Path, exact: bool = False) -> Path:
        return self.ctx.claim_output(path, "path", exact=exact)

    def release(self, path: Path) -> None:
        self.ctx.release_claim(path)


def _sample(count: int, limit: int) -> list[int]:
    """``limit`` frame indices spread evenly over ``count`` frames, first and last included."""
    if count <= limit:
        return list(range(count))
    if limit == 1:
        return [0]
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


@node("contact_sheet", category="video", output="path", side_effects=True)
def contact_sheet(
    video: Video,
    ctx: RunContext,
    path: OutputPath = Path("contact_sheet.png"),
    columns: Annotated[int, Field(ge=1, le=64)] | None = None,
    max_frames: Annotated[int, Field(ge=1, le=1024)] = 64,
    min_tile: Annotated[int, Field(ge=8, le=1024)] = 96,
) -> Path:
    """Write a PNG grid of the clip's frames, each labelled with its frame index, atomically.

    Small frames are upscaled by a whole factor (nearest neighbour, pixels stay sharp). Longer clips show
    ``max_frames`` frames spread evenly, labelled with their original indices. An existing file is never
    replaced (unless the run allows overwriting): the sheet goes to ``name-1.png`` and so on instead.

    Args:
        video: the frames.
        path: the PNG file; relative paths land under the run's output folder (``--out``).
        columns: frames per row (default: the frame count, at most 8).
        max_frames: show at most this many frames.
        min_tile: upscale until the shorter side of a tile is at least this many pixels.
    """
    _check_suffix(path, (".png",))
    target = ctx.claim_output(path, "path")
    indices = _sample(video.num_frames, max_frames)
    image, _ = report.render_contact_sheet(video.frames[indices], indices, columns=columns, min_tile=min_tile)
    return report.write_png(image, target)


class ReportFiles(NamedTuple):
    """The report's two files, and its metric values by name."""

    html: Path
    json: Path
    metrics: dict[str, float]


def _existing(value: Path | None, name: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise NodeInputError(f"{str(path)!r} does not exist", input=name, code="file_not_found")
    return path


@node("write_report", category="metrics", side_effects=True)
def write_report(
    ctx: RunContext,
    path: OutputPath = Path("report.html"),
    title: Title = "reelgraph evaluation",
    note: Title = "",
    metric_1: Metric | None = None,
    metric_2: Metric | None = None,
    metric_3: Metric | None = None,
    metric_4: Metric | None = None,
    metric_5: Metric | None = None,
    metric_6: Metric | None = None,
    metric_7: Metric | None = None,
    metric_8: Metric | None = None,
    video_1: InputPath | None = None,
    sheet_1: InputPath | None = None,
    video_2: InputPath | None = None,
    sheet_2: InputPath | None = None,
    video_3: InputPath | None = None,
    sheet_3: InputPath | None = None,
    video_4: InputPath | None = None,
    sheet_4: InputPath | None = None,
) -> ReportFiles:
    """Write a static evaluation report: ``report.html`` (metrics table, contact sheets, links to the videos)
    and ``report.json`` (the same data) beside it.

    Connect any metric node's ``metric`` output and files from ``save_video`` / ``contact_sheet``; video
    ``n`` and sheet ``n`` are shown together. Files outside the report's folder are copied into
    ``<name>_files/`` so every reference is relative. In the JSON, infinite values are the string ``"inf"``.
    Existing reports are never replaced (unless the run allows overwriting): a new pair of files
    ``name-1.html`` / ``name-1.json`` is written instead.

    Args:
        path: the HTML file; relative paths land under ``--out``; the JSON gets the same name.
        title: the page's heading.
        note: a line of text under the heading.
        metric_1: a metric (``metric`` output of psnr, ssim, clip_text_alignment, ...); rows keep this order.
        metric_2: another metric row.
        metric_3: another metric row.
        metric_4: another metric row.
        metric_5: another metric row.
        metric_6: another metric row.
        metric_7: another metric row.
        metric_8: another metric row.
        video_1: a video file to link (e.g. ``save_video.path``); relative paths are the workflow's.
        sheet_1: a contact sheet PNG shown with video 1 (``contact_sheet.path``).
        video_2: another video file to link.
        sheet_2: a contact sheet PNG shown with video 2.
        video_3: another video file to link.
        sheet_3: a contact sheet PNG shown with video 3.
        video_4: another video file to link.
        sheet_4: a contact sheet PNG shown with video 4.
    """
    _check_suffix(path, (".html", ".htm"))
    metrics = [m for m in (metric_1, metric_2, metric_3, metric_4, metric_5, metric_6, metric_7, metric_8)
               if m is not None]
    items = []
    for n, (video, sheet) in enumerate(((video_1, sheet_1), (video_2, sheet_2), (video_3, sheet_3),
                                        (video_4, sheet_4)), start=1):
        item = report.ReportItem(_existing(video, f"video_{n}"), _existing(sheet, f"sheet_{n}"))
        if item.video or item.sheet:
            items.append(item)
    try:
        html_path, json_path = report.write_report(path, title, metrics, items, note=note,
                                                   progress=lambda i, n: ctx.progress(i, n), claims=_RunClaims(ctx))
    except PathNotAllowed as exc:
        raise NodeInputError(str(exc), input="path", code="path_not_allowed") from exc
    return ReportFiles(html_path, json_path, report.metric_values(metrics))
