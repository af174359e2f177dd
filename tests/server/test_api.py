"""Every route of the job API, against an in-process app with real SQLite and real worker threads."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from reelgraph.events import EVENT_KINDS

from .conftest import AUTH, HELLO, TOKEN, slow_workflow, wait_final, wait_for

JOB_KEYS = {"id", "status", "name", "params", "requested_outputs", "outputs", "files", "error", "timings", "attempts",
            "cancel_requested"}


def submit(client: Any, workflow: dict[str, Any], params: dict[str, Any] | None = None, **extra: Any) -> str:
    r = client.post("/api/jobs", json={"workflow": workflow, "params": params or {}, **extra})
    assert r.status_code == 201, r.text
    assert r.json() == {"id": r.json()["id"], "status": "queued"}
    assert re.fullmatch(r"[0-9a-f]{16}", r.json()["id"])
    assert r.headers["location"] == f"/api/jobs/{r.json()['id']}"
    return str(r.json()["id"])


def api_routes(client: Any) -> list[tuple[str, str]]:
    """(method, concrete path) for every /api route in the OpenAPI document, with made-up path parameters."""
    doc = client.get("/api/openapi.json").json()
    out = [("GET", "/api/openapi.json")]
    for path, item in doc["paths"].items():
        concrete = path.replace("{job_id}", "0123456789abcdef").replace("{name}", "a.txt")
        out.extend((method.upper(), concrete) for method in item)
    return out


def test_every_api_route_needs_the_right_token(client: Any) -> None:
    routes = api_routes(client)
    assert len(routes) >= 10  # jobs (2), job, cancel, events, files, nodes, schema, health, openapi
    for method, path in [*routes, ("GET", "/api/no-such-route")]:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}):
            r = client.request(method, path, headers={"Authorization": ""} | headers)
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.json()["error"]["where"] == "header Authorization"
            assert r.headers["www-authenticate"].startswith("Bearer")
        r = client.request(method, path, headers=AUTH)
        assert r.status_code != 401, (method, path)
    assert client.get("/api/no-such-route").json()["error"]["code"] == "not_found"
    assert client.get("/api/health", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    # the page itself holds no data and needs no token
    page = client.get("/", headers={"Authorization": ""})
    assert page.status_code == 200 and "app.js" in page.text and TOKEN not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_a_job_runs_and_reports_outputs_and_timings(client: Any) -> None:
    job_id = submit(client, HELLO, {"seed": 41})
    job = wait_final(client, job_id)
    assert set(job) == JOB_KEYS
    assert job["status"] == "finished" and job["error"] is None and job["files"] == []
    assert job["outputs"] == {"caption.text": "a red circle moving left (take 42)"}
    assert job["params"] == {"seed": 41} and job["attempts"] == 1 and job["name"] == "hello"
    t = job["timings"]
    assert t["submitted"] <= t["started"] <= t["finished"]
    assert t["run_seconds"] > 0 and set(t["nodes"]) == {"seed", "caption"}
    assert {n["status"] for n in t["nodes"].values()} == {"ran"}
    # outputs= picks what runs
    only = wait_final(client, submit(client, HELLO, {"seed": 1}, outputs=["seed.seed"]))
    assert only["outputs"] == {"seed.seed": 2} and set(only["timings"]["nodes"]) == {"seed"}


def test_an_invalid_workflow_is_422_with_every_problem_and_is_not_queued(client: Any) -> None:
    before = client.get("/api/health").json()["jobs"]
    bad = copy.deepcopy(HELLO)
    bad["nodes"]["seed"]["inputs"]["offset"] = "one"                       # invalid_value
    bad["nodes"]["caption"]["inputs"]["colour"] = 3                         # unknown_input
    bad["nodes"]["ghost"] = {"type": "no.such.type", "inputs": {}}          # unknown_node_type
    bad["nodes"]["reader"] = {"type": "t.read_path", "inputs": {"path": "../../jobs.sqlite3"}}  # path_not_allowed
    r = client.post("/api/jobs", json={"workflow": bad, "params": {"sed": 3}})   # unknown_param
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert set(r.json()) == {"problems"}
    assert all(set(p) == {"code", "node", "input", "message"} for p in problems)
    located = {(p["code"], p["node"], p["input"]) for p in problems}
    assert ("invalid_value", "seed", "offset") in located
    assert ("unknown_input", "caption", "colour") in located
    assert ("unknown_node_type", "ghost", None) in located
    assert ("path_not_allowed", "reader", "path") in located
    assert ("unknown_param", None, "sed") in located
    assert client.get("/api/health").json()["jobs"] == before
    assert client.get("/api/jobs").json()["jobs"] == []
    jobs_dir = client.app.state.rg.jobs_dir
    assert list(jobs_dir.iterdir()) == [], "a refused job leaves no folder"


def test_a_request_of_the_wrong_shape_is_422_naming_the_field(client: Any) -> None:
    cases = {
        json.dumps({"params": {}}): "body.workflow",
        json.dumps({"workflow": HELLO, "params": [1]}): "body.params",
        json.dumps({"workflow": HELLO, "outputs": "caption"}): "body.outputs",
        json.dumps({"workflow": HELLO, "priority": 1}): "body.priority",
        json.dumps([HELLO]): "body",
    }
    for body, where in cases.items():
        r = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, body
        assert [p["input"] for p in r.json()["problems"]] == [where], r.json()
        assert r.json()["problems"][0]["code"] == "bad_request"
    r = client.get("/api/jobs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["problems"][0]["input"] == "query.limit"


def test_malformed_json_is_400_with_line_and_column(client: Any) -> None:
    cases = [
        (b'{"workflow": {\n  "reelgraph": 1,\n  "nodes": {,}\n}}', 3, 13),
        (b'{"workflow": ', 1, 14),
        (b"", 1, 1),
        (b'{"workflow": {"reelgraph": NaN}}', None, None),
        (b'{"workflow": "\xff"}', None, None),
        (b"[" * 100_000 + b"]" * 100_000, None, None),
    ]
    for body, line, column in cases:
        r = client.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body[:40], r.text)
        error = r.json()["error"]
        assert error["code"] == "bad_json" and error["where"] == "body"
        if line is not None:
            assert (error["line"], error["column"]) == (line, column), error


def test_jobs_are_listed_newest_first_in_pages(client: Any) -> None:
    ids = [submit(client, HELLO, {"seed": i}) for i in range(7)]
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        r = client.get("/api/jobs", params={"limit": 3} | ({"before": before} if before else {}))
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"jobs", "next"} and len(body["jobs"]) <= 3
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        before = body["next"]
        if before is None:
            break
    assert seen == ids[::-1] and pages == 3
    for job_id in ids:
        wait_final(client, job_id)
    assert [j["id"] for j in client.get("/api/jobs", params={"status": "finished"}).json()["jobs"]] == ids[::-1]
    assert client.get("/api/jobs", params={"status": "bogus"}).status_code == 422


def read_sse(client: Any, job_id: str, headers: dict[str, str] | None = None) -> list[tuple[str, str, Any]]:
    """(id, event, data) of every frame until the stream ends."""
    frames = []
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers or {}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        block: dict[str, str] = {}
        for line in r.iter_lines():
            if line == "":
                if block:
                    frames.append((block.get("id", ""), block.get("event", "message"), json.loads(block["data"])))
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                block[key] = value
    return frames


def test_events_stream_the_engine_events_then_end(client: Any) -> None:
    job_id = submit(client, slow_workflow(steps=5, delay=0.01, tag="ev"))
    frames = read_sse(client, job_id)  # opened while queued or running: live, then the end
    assert [f[0] for f in frames] == [str(i) for i in range(1, len(frames) + 1)]
    events = [d for _, kind, d in frames if kind == "message"]
    assert frames[-1][1:] == ("end", {"status": "finished"})
    assert events[0]["event"] == "run_started" and events[-1]["event"] == "run_finished"
    assert {e["event"] for e in events} <= set(EVENT_KINDS)
    progress = [(e["i"], e["n"]) for e in events if e["event"] == "node_progress" and e["node"] == "slow"]
    assert progress == [(i, 5) for i in range(1, 6)]
    assert all({"event", "run_id", "time"} <= set(e) for e in events)
    # a finished job replays the same stream; Last-Event-ID resumes after an event
    assert read_sse(client, job_id) == frames
    assert read_sse(client, job_id, {"Last-Event-ID": "3"}) == frames[3:]
    assert client.get("/api/jobs/0123456789abcdef/events").status_code == 404


def test_files_are_served_by_exact_name_only(client: Any, tmp_path: Path) -> None:
    wf = {"reelgraph": 1, "nodes": {
        "a": {"type": "t.save_text", "inputs": {"text": "hello file", "path": "out.txt"}},
        "b": {"type": "t.save_text", "inputs": {"text": "nested", "path": "sub/deep.txt"}}}}
    job_id = submit(client, wf)
    job = wait_final(client, job_id)
    assert job["status"] == "finished", job
    assert job["files"] == ["out.txt", "sub/deep.txt"]
    assert job["outputs"] == {"a.path": "out.txt", "b.path": "sub/deep.txt"}
    r = client.get(f"/api/jobs/{job_id}/files/out.txt")
    assert r.status_code == 200 and r.content == b"hello file"
    assert r.headers["content-security-policy"] == "sandbox"
    assert client.get(f"/api/jobs/{job_id}/files/sub/deep.txt").content == b"nested"

    state = client.app.state.rg.config.state_dir
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    job_dir = state / "jobs" / job_id
    os.symlink(secret, job_dir / "link.txt")         # planted links are never followed
    os.symlink(state, job_dir / "state")
    other = submit(client, {"reelgraph": 1, "nodes": {
        "c": {"type": "t.save_text", "inputs": {"text": "other job", "path": "mine.txt"}}}})
    wait_final(client, other)
    # (dot segments sent raw, which this client would fold away, are in test_limits.py)
    refused = ["workflow.json", "link.txt", "state/jobs.sqlite3", "..%2Fjobs.sqlite3", "..%2F..%2Fjobs.sqlite3",
               "%2E%2E%2F%2E%2E%2Fjobs.sqlite3", "sub%2F..%2Fout.txt", "sub", "OUT.TXT", "out.txt%00", "out.txt%20",
               f"..%2F{other}%2Fmine.txt", str(secret), "%2Fetc%2Fpasswd", "mine.txt", ""]
    for name in refused:
        r = client.get(f"/api/jobs/{job_id}/files/{name}")
        assert r.status_code == 404, name
        assert r.json()["error"]["code"] == "not_found", name
    assert client.get(f"/api/jobs/{job_id}").json()["files"] == ["out.txt", "sub/deep.txt"]
    for bad_id in ("0123456789abcdef", "..", job_id.upper(), job_id + "0"):
        assert client.get(f"/api/jobs/{bad_id}/files/out.txt").status_code == 404


def test_workflow_paths_follow_the_sandbox(make_client: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "weights.txt").write_text("allowed")
    client = make_client(allow_paths=(str(models),))
    reader = {"reelgraph": 1, "nodes": {"r": {"type": "t.read_path", "inputs": {"path": str(models / "weights.txt")}}}}
    job = wait_final(client, submit(client, reader))
    assert job["outputs"] == {"r.result": "allowed"}
    for path in (str(tmp_path / "secret.txt"), "../../jobs.sqlite3", "../../token"):
        doc = {"reelgraph": 1, "nodes": {"r": {"type": "t.read_path", "inputs": {"path": path}}}}
        r = client.post("/api/jobs", json={"workflow": doc})
        assert r.status_code == 422
        assert [(p["code"], p["node"], p["input"]) for p in r.json()["problems"]] == [("path_not_allowed", "r", "path")]
    # an output can never replace the submitted workflow document
    clobber = {"reelgraph": 1,
               "nodes": {"w": {"type": "t.save_text", "inputs": {"text": "x", "path": "workflow.json"}}}}
    job_id = submit(client, clobber)
    job = wait_final(client, job_id)
    assert job["status"] == "finished" and job["outputs"]["w.path"] != "workflow.json"
    doc = json.loads((client.app.state.rg.jobs_dir / job_id / "workflow.json").read_text())
    assert doc == clobber


def test_cancel_removes_queued_jobs_and_interrupts_running_ones(client: Any) -> None:
    running = submit(client, slow_workflow(steps=400, delay=0.01, tag="long"))
    queued = submit(client, slow_workflow(steps=2, delay=0.0, tag="never"))
    wait_for(lambda: client.get(f"/api/jobs/{running}").json()["status"] == "running", what="a running job")
    r = client.post(f"/api/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json() == {"id": queued, "result": "removed", "status": "cancelled"}
    hub = client.app.state.rg.events  # (the test client buffers a stream until it ends: read the job's event file)
    wait_for(lambda: any(e.get("node") == "slow" and e["event"] == "node_progress" for _, e in hub.replay(running)),
             what="progress")
    r = client.post(f"/api/jobs/{running}/cancel")
    assert r.status_code == 202 and r.json() == {"id": running, "result": "interrupting", "status": "running"}
    job = wait_final(client, running, timeout=10)
    assert job["status"] == "cancelled" and job["error"]["code"] == "interrupted"
    assert job["timings"]["nodes"]["first"]["status"] == "ran" and "mark" not in job["timings"]["nodes"]
    never = client.get(f"/api/jobs/{queued}").json()
    assert never["status"] == "cancelled" and never["attempts"] == 0
    assert read_sse(client, queued) == [("1", "end", {"status": "cancelled"})]
    for job_id in (queued, running):
        r = client.post(f"/api/jobs/{job_id}/cancel")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_cancellable"
        assert r.json()["error"]["status"] == "cancelled"
    assert client.post("/api/jobs/0123456789abcdef/cancel").status_code == 404
    # finished nodes of the cancelled job were kept: running it again takes `first` from the cache
    again = wait_final(client, submit(client, slow_workflow(steps=400, delay=0.0, tag="long")))
    assert again["timings"]["nodes"]["first"]["status"] == "cached"
    marks = Path(os.environ["REELGRAPH_MARK_LOG"]).read_text().split()
    assert "never" not in marks and marks.count("long") == 1


def test_cancel_stops_only_its_job_with_two_workers(make_client: Any) -> None:
    client = make_client(workers=2)
    a = submit(client, slow_workflow(steps=300, delay=0.01, tag="a"))
    b = submit(client, slow_workflow(steps=60, delay=0.01, tag="b"))
    wait_for(lambda: client.get("/api/health").json()["running"] == 2, what="two running jobs")
    assert client.post(f"/api/jobs/{a}/cancel").status_code == 202
    assert wait_final(client, a, timeout=10)["status"] == "cancelled"
    job_b = wait_final(client, b, timeout=30)
    assert job_b["status"] == "finished" and job_b["outputs"] == {"mark.tag": "b"}


def test_nodes_schema_health_and_openapi(client: Any) -> None:
    nodes = client.get("/api/nodes").json()
    assert {"format_text", "seed", "t.add", "s.mark"} <= {n["type"] for n in nodes}
    assert {"type", "inputs", "outputs", "description"} <= set(nodes[0])
    schema = client.get("/api/schema").json()
    assert schema["$id"].endswith("workflow-v1.json") and "nodes" in schema["properties"]
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["workers"] == 1
    assert set(health["jobs"]) == {"queued", "running", "finished", "failed", "cancelled"}
    doc = client.get("/api/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/events", "/api/jobs/{job_id}/cancel",
            "/api/jobs/{job_id}/files/{name}", "/api/nodes", "/api/schema", "/api/health"} <= set(doc["paths"])
    schemas = doc["components"]["schemas"]
    assert set(schemas["Job"]["properties"]) == JOB_KEYS
    assert doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "workflow"]
    assert "422" in doc["paths"]["/api/jobs"]["post"]["responses"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_failing_node_fails_the_job_with_a_located_error(client: Any) -> None:
    wf = {"reelgraph": 1, "nodes": {"x": {"type": "t.fail", "inputs": {"x": 1, "message": "kaput"}}}}
    job = wait_final(client, submit(client, wf))
    assert job["status"] == "failed"
    assert job["error"] == {"code": "node_failed", "node": "x", "input": None, "message": "RuntimeError: kaput",
                            "node_type": "t.fail"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.com"])
def test_a_public_address_without_a_token_is_refused(host: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from reelgraph.cli import main

    monkeypatch.delenv("REELGRAPH_TOKEN", raising=False)
    assert main(["serve", "--host", host, "--state-dir", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s" / "jobs.sqlite3").exists()


def test_loopback_without_a_token_makes_a_private_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reelgraph.server import is_loopback, resolve_token

    monkeypatch.delenv("REELGRAPH_TOKEN", raising=False)
    token, made = resolve_token("127.0.0.1", None, tmp_path)
    assert made and len(token) >= 32
    assert (tmp_path / "token").read_text().strip() == token
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert resolve_token("127.0.0.1", None, tmp_path)[0] != token  # a new one each start
    monkeypatch.setenv("REELGRAPH_TOKEN", "from-env")
    assert resolve_token("0.0.0.0", None, tmp_path) == ("from-env", False)
    assert resolve_token("0.0.0.0", "given", tmp_path) == ("given", False)
    assert [is_loopback(h) for h in ("localhost", "127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "10.0.0.1")] == [
        True, True, True, True, False, False]


def test_one_server_per_state_folder(client: Any) -> None:
    from reelgraph.server import ServeError, ServerConfig, ServerState

    state_dir = client.app.state.rg.config.state_dir
    with pytest.raises(ServeError, match="another reelgraph server"):
        ServerState.open(ServerConfig(state_dir, TOKEN, entry_points=False))
