"""Contact sheets and the evaluation report: PNG geometry and labels, a parseable HTML page whose every
reference exists inside its folder, strict JSON, and the shipped eval_inversion workflow from the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from reelgraph import Engine, NodeFailed
from reelgraph.nodes.report import render_contact_sheet, sheet_layout

torch = pytest.importorskip("torch")
av = pytest.importorskip("av")

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "workflows" / "assets" / "red_circle_left.mp4"
EVAL = ROOT / "workflows" / "eval_inversion.json"


def decode_png(path: Path) -> Any:
    """The PNG's pixels as a uint8 tensor [H, W, 3], decoded with PyAV."""
    with av.open(str(path)) as container:
        return torch.from_numpy(next(container.decode(video=0)).to_ndarray(format="rgb24"))


class References(HTMLParser):
    """Collects every tag, and every ``src``/``href`` value, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def parse_report(html_path: Path) -> References:
    """Parse the page and check that every reference is a relative path to an existing file inside its folder."""
    parser = References()
    parser.feed(html_path.read_text(encoding="utf-8"))
    parser.close()
    folder = html_path.parent.resolve()
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref
        target = (folder / ref).resolve()
        assert target.is_file() and target.is_relative_to(folder), ref
    return parser


def strict_json(path: Path) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_contact_sheet_geometry_and_labels() -> None:
    frames = torch.rand(5, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    image, layout = render_contact_sheet(frames, indices=[0, 3, 6, 9, 12], columns=2, min_tile=64)
    # 20 px frames need a scale of 4 to reach 64 px; 3 rows of 2; gaps of 4 px; label strips 7 font pixels.
    assert (layout.columns, layout.rows, layout.scale, layout.tile_height, layout.tile_width) == (2, 3, 4, 80, 120)
    assert tuple(image.shape) == (3 * (layout.label_height + 80) + 4 * 4, 2 * 120 + 3 * 4, 3)
    # Tile 3 (row 1, column 1) holds frame 3, upscaled by nearest neighbour.
    top = 4 + (layout.label_height + 80 + 4) + layout.label_height
    left = 4 + 120 + 4
    tile = image[top:top + 80, left:left + 120].permute(2, 0, 1).float()
    assert torch.equal(tile[:, ::4, ::4], (frames[3] * 255).round())
    label = image[top - layout.label_height:top, left:left + 120]
    assert (label == 235).any() and (label[:, 60:] == 24).all()  # digits "9" at the left, background elsewhere
    assert sheet_layout(1, 200, 300).scale == 1


def _engine_run(make_engine: Callable[..., Engine], doc: dict[str, Any], tmp_path: Path, **kw: Any) -> Any:
    return make_engine().run(doc, out_dir=tmp_path, **kw)


def _sheet_workflow(folder: Path, **inputs: Any) -> dict[str, Any]:
    clip = folder / ASSET.name
    if not clip.exists():
        shutil.copyfile(ASSET, clip)
    return {"reelgraph": 1, "name": "t", "nodes": {
        "v": {"type": "load_video", "inputs": {"path": str(clip)}},
        "sheet": {"type": "contact_sheet", "inputs": {"video": {"from": "v.video"}, **inputs}},
    }}


def test_contact_sheet_node_writes_a_png_of_the_right_size(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                          tmp_path: Path) -> None:
    from reelgraph.nodes.video_io import read_video

    result = _engine_run(make_engine, _sheet_workflow(tmp_path, path="sheets/clip.png", columns=3), tmp_path)
    path = result.outputs["sheet.path"]
    assert path == tmp_path / "sheets" / "clip.png"
    image = decode_png(path)
    # 8 frames of 32x32 in 3 columns: 3 rows, scale 3 (96 px tiles), label strips of 14 px, gaps of 4 px.
    assert tuple(image.shape) == (3 * (14 + 96) + 4 * 4, 3 * 96 + 4 * 4, 3)
    frame0 = (read_video(ASSET).frames[0] * 255).round()
    assert torch.equal(image[4 + 14:4 + 14 + 96:3, 4:4 + 96:3].permute(2, 0, 1).float(), frame0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.png"]  # nothing temporary left behind

    sampled = _engine_run(make_engine, _sheet_workflow(tmp_path, path="few.png", max_frames=3), tmp_path)
    assert tuple(decode_png(sampled.outputs["sheet.path"]).shape) == (14 + 96 + 8, 3 * 96 + 4 * 4, 3)
    with pytest.raises(NodeFailed) as info:
        _engine_run(make_engine, _sheet_workflow(tmp_path, path="sheet.jpg"), tmp_path)
    assert (info.value.node, info.value.input) == ("sheet", "path")


def _report_workflow(folder: Path) -> dict[str, Any]:
    doc = _sheet_workflow(folder, path="reports/sheets/clip.png")
    doc["nodes"].update({
        "w": {"type": "load_video", "inputs": {"path": str(folder / ASSET.name), "start": 1, "max_frames": 7}},
        "r": {"type": "load_video", "inputs": {"path": str(folder / ASSET.name), "max_frames": 7}},
        "save": {"type": "save_video", "inputs": {"video": {"from": "w.video"}, "path": "shifted.mp4"}},
        "same": {"type": "psnr", "inputs": {"video": {"from": "r.video"}, "reference": {"from": "r.video"},
                                            "label": "psnr <identical>"}},
        "shift": {"type": "ssim", "inputs": {"video": {"from": "w.video"}, "reference": {"from": "r.video"}}},
        "report": {"type": "write_report", "inputs": {
            "path": "reports/report.html", "title": "Test & report", "metric_1": {"from": "same.metric"},
            "metric_2": {"from": "shift.metric"}, "metric_3": {"from": "same.metric"},
            "video_1": {"from": "save.path"}, "sheet_1": {"from": "sheet.path"}, "sheet_2": {"from": "sheet.path"}}},
    })
    return doc


def test_report_html_parses_and_every_reference_exists(reelgraph_home: Path, make_engine: Callable[..., Engine],
                                                       tmp_path: Path) -> None:
    result = _engine_run(make_engine, _report_workflow(tmp_path), tmp_path)
    html_path, json_path = result.outputs["report.html"], result.outputs["report.json"]
    assert (html_path, json_path) == (tmp_path / "reports" / "report.html", tmp_path / "reports" / "report.json")
    page = parse_report(html_path)
    assert page.tags.count("tr") == 4 and page.tags.count("img") == 2
    assert sorted(page.refs) == ["report_files/shifted.mp4", "sheets/clip.png", "sheets/clip.png",
                                 "sheets/clip.png", "sheets/clip.png"]
    text = html_path.read_text(encoding="utf-8")
    assert "psnr &lt;identical&gt;" in text and "Test &amp; report" in text and "∞" in text

    doc = strict_json(json_path)
    assert [m["name"] for m in doc["metrics"]] == ["psnr <identical>", "ssim", "psnr <identical>"]
    assert doc["metrics"][0]["value"] == "inf" and doc["metrics"][0]["items"] == ["inf"] * 7
    assert doc["metrics"][1]["details"]["data_range"] == 1.0 and 0 < doc["metrics"][1]["value"] < 1
    assert doc["clips"][0] == {"name": "shifted.mp4", "video": "report_files/shifted.mp4", "sheet": "sheets/clip.png"}
    values = result.outputs["report.metrics"]
    assert list(values) == ["psnr <identical>", "ssim", "psnr <identical>_2"]
    leftovers = [p for p in (tmp_path / "reports").rglob("*") if p.name.startswith(".")]
    assert not leftovers
    # Another run (a fresh engine, so nothing is cached) never replaces the first report.
    again = _engine_run(make_engine, _report_workflow(tmp_path), tmp_path)
    assert (again.outputs["report.html"].name, again.outputs["report.json"].name) == ("report-1.html", "report-1.json")
    assert strict_json(json_path) == doc
    parse_report(again.outputs["report.html"])


def test_report_refuses_missing_files(reelgraph_home: Path, make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    doc = {"reelgraph": 1, "name": "t", "nodes": {
        "report": {"type": "write_report", "inputs": {"video_2": str(tmp_path / "nope.mp4")}}}}
    with pytest.raises(NodeFailed) as info:
        _engine_run(make_engine, doc, tmp_path)
    assert (info.value.code, info.value.node, info.value.input) == ("file_not_found", "report", "video_2")


def test_eval_inversion_workflow_from_the_cli(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "reelgraph", "run", str(EVAL), "--out", str(out), "--set", "steps=3",
                           "--quiet"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"report.html = {out / 'report.html'}", f"report.json = {out / 'report.json'}"]
    assert lines[2].startswith("report.metrics = {'psnr': ") and "'psnr_vae_roundtrip': " in lines[2]
    page = parse_report(out / "report.html")
    assert sorted(page.refs) == ["reconstruction.mp4", "reconstruction_sheet.png", "reconstruction_sheet.png",
                                 "source_sheet.png", "source_sheet.png"]
    doc = strict_json(out / "report.json")
    assert [m["name"] for m in doc["metrics"]] == ["psnr", "ssim", "psnr_vae_roundtrip"]
    assert all(isinstance(m["value"], float) for m in doc["metrics"])
