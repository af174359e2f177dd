"""Fuzz: workflows whose paths arrive by literal, parameter and link never read or write outside the roots.

Every file operation Python performs during the runs is watched with an audit hook (``sys.addaudithook``):
``open``, listing, creating, renaming, copying and removing. A case counts as an escape when any of them
touches the ``outside`` folder (through ``..``, an absolute path, a symlink, a container of paths, a linked
string), or writes anywhere outside the allowed roots and the run's own temporary folder.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reelgraph import Engine, NodeFailed, WorkflowInvalid

from conftest import link, wf

CASES = int(os.environ.get("FUZZ_CASES", "2400"))
_WATCHED = {"open", "os.listdir", "os.scandir", "os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink",
            "os.link", "os.truncate", "os.chmod", "os.utime", "shutil.copyfile", "shutil.copytree", "shutil.rmtree"}
_WRITES = {"os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "os.truncate", "os.chmod",
           "os.utime", "shutil.copyfile", "shutil.copytree", "shutil.rmtree"}

_TWO_PATHS = {"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copytree"}


class Audit:
    """Collects the file operations that touch ``outside`` or write outside ``roots`` while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.outside = ""
        self.roots: list[str] = []
        self.escapes: list[tuple[str, str]] = []
        self.seen = 0

    def _inside(self, path: str, folders: list[str]) -> bool:
        return any(path == f or path.startswith(f + os.sep) for f in folders)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in _WATCHED:
            return
        writing = event in _WRITES
        no_follow = False  # O_NOFOLLOW / O_EXCL|O_CREAT opens never touch a link's target
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2]
            no_follow = isinstance(flags, int) and bool(
                flags & getattr(os, "O_NOFOLLOW", 0) or (flags & os.O_EXCL and flags & os.O_CREAT))
            writing = bool(isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        paths = args[:2] if event in _TWO_PATHS else args[:1]
        for arg in paths:
            if isinstance(arg, bytes):
                arg = os.fsdecode(arg)
            if not isinstance(arg, str | os.PathLike) or isinstance(arg, int):
                continue
            try:
                text = os.fspath(arg)
                if no_follow:
                    head, name = os.path.split(os.path.abspath(text))
                    real = os.path.join(os.path.realpath(head), name)
                else:
                    real = os.path.realpath(text)
            except (TypeError, ValueError):
                continue
            self.seen += 1
            if self._inside(real, [self.outside]) or (writing and not self._inside(real, self.roots)):
                self.escapes.append((event, real))


AUDIT = Audit()
sys.addaudithook(AUDIT)


def _layout(base: Path) -> dict[str, Path]:
    flows, out, outside = base / "flows", base / "out", base / "outside"
    for folder in (flows / "sub", out, outside / "deep"):
        folder.mkdir(parents=True)
    (flows / "in.txt").write_text("inside")
    (flows / "sub" / "a.txt").write_text("a")
    (outside / "secret.txt").write_text("secret")
    (outside / "deep" / "key.txt").write_text("key")
    (flows / "link_file.txt").symlink_to(outside / "secret.txt")
    (flows / "link_dir").symlink_to(outside, target_is_directory=True)
    (flows / "dangling.txt").symlink_to(outside / "nothing.txt")
    (flows / "inner_link.txt").symlink_to(flows / "in.txt")
    (out / "out_link").symlink_to(outside, target_is_directory=True)
    (out / "trap.txt").symlink_to(outside / "secret.txt")
    return {"flows": flows, "out": out, "outside": outside}


def _path_values(t: dict[str, Path]) -> list[str]:
    outside = t["outside"]
    return [
        "in.txt", "sub/a.txt", "inner_link.txt", "sub/../in.txt", str(t["flows"] / "in.txt"),
        "../outside/secret.txt", "sub/../../outside/secret.txt", "../outside/deep/key.txt", str(outside / "secret.txt"),
        str(outside / "missing.txt"), "link_file.txt", "link_dir/secret.txt", "link_dir/deep/key.txt", "dangling.txt",
        "../out/out_link/secret.txt", "../out/trap.txt", f"{outside}/../outside/secret.txt", "~/../../" + str(outside),
        "./../outside", "link_dir", "a\x00b", "", "sub/" + "../" * 30 + str(outside).lstrip("/") + "/secret.txt",
    ]


def _output_values(t: dict[str, Path]) -> list[str]:
    return ["x.txt", "deep/x.txt", "out_link/x.txt", "trap.txt", "../outside/x.txt", str(t["outside"] / "x.txt"),
            "../flows/link_dir/x.txt", "../flows/w.txt", str(t["flows"] / "w.txt"), "out_link/deep/../x.txt"]


def _case(rng: random.Random, t: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One random workflow and its run parameters."""
    reads, writes = _path_values(t), _output_values(t)
    nodes: dict[str, Any] = {}
    params: dict[str, Any] = {}

    def deliver(value: str, node: str, port: str) -> Any:
        how = rng.choice(["literal", "param", "link", "format"])
        if how == "literal":
            return value
        if how == "param":
            name = f"p{len(params)}"
            params[name] = {"type": "str", "default": value}
            return {"param": name}
        src = f"s{len(nodes)}"
        if how == "link":
            nodes[src] = {"type": "text", "inputs": {"value": value}}
            return link(f"{src}.value")
        head, _, tail = value.rpartition("/")
        nodes[src] = {"type": "format_text", "inputs": {"template": (head + "/" if head else "") + "{value}",
                                                         "value": tail}}
        return link(f"{src}.text")

    kind = rng.choice(["read_file", "read_path", "read_many", "lines", "save_text", "save_anywhere", "load_video",
                       "report"])
    if kind in ("read_file", "read_path"):
        nodes["n"] = {"type": f"t.{kind}", "inputs": {"path": deliver(rng.choice(reads), "n", "path")}}
    elif kind == "read_many":
        picks = rng.sample(reads, 3)
        nodes["n"] = {"type": "t.read_many", "inputs": {"paths": picks[:2], "named": {"k": picks[2]},
                                                        "pair": [rng.choice(reads), "x"]}}
    elif kind == "lines":
        nodes["l"] = {"type": "t.lines", "inputs": {"text": "\n".join(rng.sample(reads, 2))}}
        nodes["n"] = {"type": "t.read_many", "inputs": {"paths": link("l.result")}}
    elif kind == "save_text":
        nodes["n"] = {"type": "t.save_text", "inputs": {"text": "x", "path": deliver(rng.choice(writes), "n", "path")}}
    elif kind == "save_anywhere":
        nodes["n"] = {"type": "t.save_anywhere", "inputs": {"text": "x",
                                                            "where": deliver(rng.choice(writes), "n", "where")}}
    elif kind == "load_video":
        nodes["n"] = {"type": "load_video", "inputs": {"path": deliver(rng.choice(reads), "n", "path")}}
    else:
        nodes["n"] = {"type": "write_report", "inputs": {"path": deliver(rng.choice(writes[:4]) + ".html", "n", "path"),
                                                         "video_1": deliver(rng.choice(reads), "n", "video_1"),
                                                         "sheet_1": deliver(rng.choice(reads), "n", "sheet_1")}}
    return wf(nodes, params=params), {"overwrite": rng.random() < 0.5}


def test_no_path_reaches_outside_the_roots(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    t = _layout(tmp_path)
    engine = make_engine()
    rng = random.Random(15)
    doc_path = t["flows"] / "w.json"
    AUDIT.outside = os.path.realpath(t["outside"])
    AUDIT.roots = [os.path.realpath(t["flows"]), os.path.realpath(t["out"]), os.path.realpath(tempfile.gettempdir())]
    AUDIT.escapes.clear()
    outcomes: Counter[str] = Counter()
    try:
        for i in range(CASES):
            doc, options = _case(rng, t)
            doc_path.write_text(json.dumps(doc), encoding="utf-8")
            AUDIT.active = True
            try:
                engine.run(doc_path, out_dir=t["out"], overwrite=options["overwrite"], max_memory=2**30)
                outcomes["finished"] += 1
            except WorkflowInvalid as exc:
                outcomes["invalid:" + ",".join(sorted({p.code for p in exc.problems}))] += 1
            except NodeFailed as exc:
                outcomes[f"failed:{exc.code}"] += 1
            finally:
                AUDIT.active = False
            assert not AUDIT.escapes, (i, doc, AUDIT.escapes)
    finally:
        AUDIT.active = False
    assert sum(outcomes.values()) == CASES
    # Both sides were exercised: runs that read and wrote inside, and refusals of every delivery.
    assert outcomes["finished"] > CASES // 10, outcomes
    assert outcomes["invalid:path_not_allowed"] > CASES // 10 and outcomes["failed:path_not_allowed"] > CASES // 10
    assert list(p.name for p in t["outside"].iterdir()) == ["deep", "secret.txt"] or sorted(
        p.name for p in t["outside"].iterdir()) == ["deep", "secret.txt"]
    print(f"\n{CASES} fuzzed workflows, {AUDIT.seen} file operations watched, 0 outside the roots: {dict(outcomes)}")


def test_the_audit_hook_sees_an_allowed_read_outside(make_engine: Callable[..., Engine], tmp_path: Path) -> None:
    """The control: what the user allows (``allow_paths``) is read, and the hook counts it."""
    t = _layout(tmp_path)
    doc = t["flows"] / "w.json"
    doc.write_text(json.dumps(wf({"n": {"type": "t.read_path", "inputs": {"path": "link_file.txt"}}})))
    AUDIT.outside, AUDIT.roots = os.path.realpath(t["outside"]), [os.path.realpath(t["flows"])]
    AUDIT.escapes.clear()
    AUDIT.active = True
    try:
        result = make_engine().run(doc, out_dir=t["out"], allow_paths=[t["outside"]])
    finally:
        AUDIT.active = False
    assert result.outputs["n.result"] == "secret"
    assert any(event == "open" for event, _ in AUDIT.escapes)
