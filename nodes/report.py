"""Contact sheets (a PNG grid of labelled frames) and the evaluation report (``report.json`` + ``report.html``).

A contact sheet shows a clip at a glance: frames are upscaled by an integer factor (nearest neighbour, so
pixels stay sharp), laid out in a grid, and each is labelled with its frame index in a built-in 3x5 pixel
digit font, so no font files or imaging library are needed. The PNG is encoded with PyAV's PNG encoder
(already a dependency for video), losslessly.

The report is static: a JSON document with every metric and file, and an HTML page with a metrics table,
the contact sheets and links to the videos. Every file the page references lies inside the report's folder
and is referenced by a relative path, so the folder can be moved or served as it is: files that are
elsewhere are copied into ``<report stem>_files/``. All files are written atomically (a temporary name in
the target folder, then ``os.replace``).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reelgraph.files import atomic_path, atomic_write_bytes, atomic_write_text
from reelgraph.paths import PathNotAllowed

from .metrics import Metric

if TYPE_CHECKING:
    import torch

__all__ = ["ReportItem", "SheetLayout", "metric_values", "render_contact_sheet", "sheet_layout", "write_png",
           "write_report"]

# 3x5 bitmaps of the digits 0-9, rows top to bottom, "1" = ink.
_DIGITS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
}
_BACKGROUND = 24
_INK = 235


# ----------------------------------------------------------------------------------------------- contact sheet


@dataclass(frozen=True)
class SheetLayout:
    """The geometry of a contact sheet, in pixels."""

    columns: int
    rows: int
    scale: int
    tile_height: int
    tile_width: int
    label_height: int
    font_scale: int
    gap: int

    @property
    def width(self) -> int:
        """Width of the whole sheet."""
        return self.columns * self.tile_width + (self.columns + 1) * self.gap

    @property
    def height(self) -> int:
        """Height of the whole sheet."""
        return self.rows * (self.label_height + self.tile_height) + (self.rows + 1) * self.gap


def sheet_layout(count: int, height: int, width: int, columns: int | None = None, min_tile: int = 96,
                 gap: int = 4) -> SheetLayout:
    """Lay out ``count`` frames of ``height`` x ``width``: ``columns`` (default ``min(count, 8)``), an integer
    upscale so the shorter side of a tile is at least ``min_tile`` pixels, and a label strip over each tile
    whose digits are 5 font pixels tall at a font scale that grows with the tile."""
    columns = max(1, min(columns or min(count, 8), count))
    rows = math.ceil(count / columns)
    scale = max(1, math.ceil(min_tile / min(height, width)))
    tile_h, tile_w = height * scale, width * scale
    font = max(1, min(4, tile_w // 48))
    return SheetLayout(columns, rows, scale, tile_h, tile_w, label_height=7 * font, font_scale=font, gap=gap)


def _draw_label(sheet: torch.Tensor, text: str, top: int, left: int, font: int) -> None:
    """Draw ``text`` (digits) into ``sheet`` ``[H, W, 3]`` uint8 at (top, left), each font pixel ``font`` wide."""
    x = left
    for char in text:
        for r, row in enumerate(_DIGITS[char]):
            for c, bit in enumerate(row):
                if bit == "1":
                    y0, x0 = top + r * font, x + c * font
                    sheet[y0:y0 + font, x0:x0 + font] = _INK
        x += 4 * font


def render_contact_sheet(frames: torch.Tensor, indices: Sequence[int] | None = None, columns: int | None = None,
                         min_tile: int = 96) -> tuple[torch.Tensor, SheetLayout]:
    """Render frames ``[F, C, H, W]`` in [0, 1] (C = 1 or 3) as one uint8 image ``[H', W', 3]`` and its layout.

    ``indices`` are the labels (default ``0..F-1``), e.g. the original frame numbers of sampled frames.
    """
    import torch

    count, channels, height, width = (int(s) for s in frames.shape)
    labels = list(indices) if indices is not None else list(range(count))
    layout = sheet_layout(count, height, width, columns, min_tile)
    sheet = torch.full((layout.height, layout.width, 3), _BACKGROUND, dtype=torch.uint8)
    pixels = (frames.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    if channels == 1:
        pixels = pixels.expand(count, 3, height, width)
    for i in range(count):
        row, col = divmod(i, layout.columns)
        top = layout.gap + row * (layout.label_height + layout.tile_height + layout.gap)
        left = layout.gap + col * (layout.tile_width + layout.gap)
        _draw_label(sheet, str(labels[i]), top + layout.font_scale, left + layout.font_scale, layout.font_scale)
        tile = pixels[i].repeat_interleave(layout.scale, 1).repeat_interleave(layout.scale, 2).permute(1, 2, 0)
        y = top + layout.label_height
        sheet[y:y + layout.tile_height, left:left + layout.tile_width] = tile
    return sheet, layout


def write_png(image: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 RGB image ``[H, W, 3]`` to ``path`` as a PNG (lossless, via PyAV), atomically."""
    import av

    path = Path(path)
    height, width = int(image.shape[0]), int(image.shape[1])
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(image.contiguous().numpy(), format="rgb24")
    data = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
    return atomic_write_bytes(path, data)


# ----------------------------------------------------------------------------------------------- report


class Claims(Protocol):
    """Decides the names files are written under: in a run, the engine's ``RunContext.claim_output``."""

    def claim(self, path: Path, exact: bool = False) -> Path:
        """The name to write ``path`` under (``exact``: that name or ``FileExistsError``)."""
        ...

    def release(self, path: Path) -> None:
        """Give back a name claimed and not written."""
        ...


class _Direct:
    """Claims outside a run (library use): every file is written where asked."""

    def claim(self, path: Path, exact: bool = False) -> Path:
        return path

    def release(self, path: Path) -> None:
        return None


@dataclass(frozen=True)
class ReportItem:
    """One clip in the report: its video file and/or contact sheet (either may be ``None``)."""

    video: Path | None = None
    sheet: Path | None = None

    @property
    def name(self) -> str:
        """The caption: the video's file name, else the sheet's."""
        return (self.video or self.sheet or Path("")).name


def _same_file_content(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (sizes first, so differing large files are not read)."""
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _place(file: Path, folder: Path, files_dir: Path, claims: Claims) -> str:
    """The report-relative reference to ``file``: as is when it lies under ``folder``, else a copy in
    ``files_dir`` (an identical copy there is reused; otherwise a new name is claimed and copied atomically)."""
    file = file.resolve()
    if file.is_relative_to(folder):
        return file.relative_to(folder).as_posix()
    if os.path.lexists(files_dir) and (files_dir.is_symlink() or not files_dir.is_dir()):
        raise PathNotAllowed(f"{files_dir.name!r} beside the report is not a plain folder; reports never write "
                             "through links")
    for n in range(100):
        existing = files_dir / (file.name if n == 0 else f"{file.stem}-{n}{file.suffix}")
        if not existing.is_file() or existing.is_symlink():
            break
        if _same_file_content(existing, file):
            return existing.relative_to(folder).as_posix()
    target = claims.claim(files_dir / file.name)
    with atomic_path(target) as tmp:
        shutil.copyfile(file, tmp)
    return target.relative_to(folder).as_posix()


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _per_item(metric: Metric, shown: int = 16) -> str:
    if not metric.items:
        return ""
    values = " ".join(_fmt(v) for v in metric.items[:shown])
    more = f" … ({len(metric.items)} in all)" if len(metric.items) > shown else ""
    return f"{values}{more}"


def _details(metric: Metric) -> str:
    return "; ".join(f"{k} = {v}" for k, v in metric.details.items())


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } p.note { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0 2em; background: white; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.7em; text-align: left; vertical-align: top; font-size: 0.92em; }
th { background: #eee; } td.value { font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.items, td.details { font-family: ui-monospace, monospace; font-size: 0.82em; color: #444; max-width: 32em; }
.clip { display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; background: white; padding: 0.6em;
        border: 1px solid #ccc; }
.clip img { display: block; max-width: 100%; image-rendering: pixelated; }
.clip .caption { margin-top: 0.4em; font-size: 0.9em; }
"""


def _html(title: str, note: str, metrics: Sequence[Metric], clips: Sequence[dict[str, Any]]) -> str:
    esc = html.escape
    rows = []
    for m in metrics:
        better = "higher" if m.higher_is_better else "lower"
        rows.append(f"<tr><td>{esc(m.name)}</td><td class=\"value\">{esc(_fmt(m.value))}</td><td>{esc(m.unit)}</td>"
                    f"<td>{better}</td><td class=\"items\">{esc(_per_item(m))}</td>"
                    f"<td class=\"details\">{esc(_details(m))}</td></tr>")
    table = ("<table><thead><tr><th>metric</th><th>value</th><th>unit</th><th>better</th><th>per frame / pair</th>"
             "<th>how</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>") if rows else "<p>No metrics.</p>"
    cards = []
    for clip in clips:
        parts = [f"<div class=\"clip\"><div><strong>{esc(clip['name'])}</strong></div>"]
        if clip["sheet"]:
            parts.append(f"<img src=\"{esc(clip['sheet'], quote=True)}\" alt=\"contact sheet of {esc(clip['name'])}\">")
        caption = []
        if clip["video"]:
            caption.append(f"<a href=\"{esc(clip['video'], quote=True)}\">{esc(Path(clip['video']).name)}</a>")
        if clip["sheet"]:
            caption.append(f"<a href=\"{esc(clip['sheet'], quote=True)}\">contact sheet</a>")
        parts.append(f"<div class=\"caption\">{' · '.join(caption)}</div></div>")
        cards.append("".join(parts))
    clips_html = "<h2>Clips</h2>\n" + "\n".join(cards) if cards else ""
    note_html = f"<p class=\"note\">{esc(note)}</p>" if note else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>\n"
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n{note_html}\n<h2>Metrics</h2>\n{table}\n"
            f"{clips_html}\n</body>\n</html>\n")


def _claim_pair(html_path: Path, claims: Claims) -> tuple[Path, Path]:
    """Claim ``<stem>.html`` and its ``<stem>.json`` twin together: the first ``n`` where both are free
    (``name-1.html`` + ``name-1.json``, ...). A claim that cannot have both gives the first one back."""
    for n in range(10_000):
        html = html_path if n == 0 else html_path.with_name(f"{html_path.stem}-{n}{html_path.suffix}")
        try:
            first = claims.claim(html, exact=True)
        except FileExistsError:
            continue
        try:
            return first, claims.claim(first.with_suffix(".json"), exact=True)
        except FileExistsError:
            claims.release(first)
    raise FileExistsError(f"no free name next to {html_path}")


def write_report(html_path: str | os.PathLike[str], title: str, metrics: Sequence[Metric],
                 items: Sequence[ReportItem], note: str = "",
                 progress: Callable[[int, int], None] | None = None,
                 claims: Claims | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.html`` and ``<stem>.json`` for ``metrics`` and ``items``; return both paths.

    Files outside the HTML file's folder are copied into ``<stem>_files/`` beside it, so every reference is
    relative and inside the folder. ``claims`` decides every file name written (in a run, the engine's
    ``RunContext.claim_output``: sandboxed, never replacing what it may not); without it, the files are
    written where asked.
    """
    claims = claims or _Direct()
    html_path, json_path = _claim_pair(Path(html_path), claims)
    folder = html_path.parent
    files_dir = folder / f"{html_path.stem}_files"
    clips = []
    for n, item in enumerate(items):
        clips.append({
            "name": item.name,
            "video": _place(item.video, folder, files_dir, claims) if item.video else None,
            "sheet": _place(item.sheet, folder, files_dir, claims) if item.sheet else None,
        })
        if progress is not None:
            progress(n + 1, len(items))
    document = {"title": title, "note": note, "metrics": [m.to_json() for m in metrics], "clips": clips}
    atomic_write_text(json_path, json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    atomic_write_text(html_path, _html(title, note, metrics, clips))
    return html_path, json_path


def metric_values(metrics: Sequence[Metric]) -> dict[str, float]:
    """``{name: value}``; repeated names get ``_2``, ``_3``, ... suffixes."""
    out: dict[str, float] = {}
    for m in metrics:
        name, n = m.name, 2
        while name in out:
            name, n = f"{m.name}_{n}", n + 1
        out[name] = m.value
    return out
