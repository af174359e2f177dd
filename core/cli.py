"""The ``reelgraph`` command: run, validate, graph, nodes, schema, plugins, batch, cache, errors, serve.

Exit codes: 0 success; 1 invalid workflow (every problem printed); 2 bad command line;
3 a node failed; 130 interrupted. A traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from .api import DEFAULT_OUT_DIR, Engine, read_workflow
from .batch_cli import add_batch_parser, cmd_batch
from .errors import NodeFailed, Problem, RunInterrupted, WorkflowInvalid
from .files import atomic_write_text
from .memory import parse_size

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """A mistake on the command line (exit code 2): a malformed option, a file that is not there."""


def _threads_arg(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"want a thread count >= 1 or 'auto', got {text!r}")


def _add_plugin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load a plugin from a .py file or module (repeatable; also $REELGRAPH_PLUGINS)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for unexpected errors")


def _add_param_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="sets",
                   help="set a workflow parameter (repeatable); json params take JSON text")
    p.add_argument("--out", default=str(DEFAULT_OUT_DIR), metavar="DIR",
                   help="folder for relative output paths (default: ./outputs)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR", dest="allow_paths",
                   help="also allow the workflow to read and write under DIR (repeatable)")


def _size_arg(text: str) -> int | str | None:
    if text == "auto":
        return text
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``reelgraph`` command."""
    parser = argparse.ArgumentParser(prog="reelgraph", description="Run and inspect reelgraph workflows.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate and run a workflow")
    p.add_argument("workflow", help="workflow JSON file")
    _add_param_args(p)
    p.add_argument("--output", action="append", default=None, metavar="NODE[.OUTPUT]",
                   help="run only what this output needs (repeatable; default: all terminal nodes)")
    p.add_argument("--overwrite", action="store_true",
                   help="let outputs replace existing files (default: write name-1.ext, name-2.ext, ...)")
    p.add_argument("--max-memory", default="auto", metavar="SIZE", type=_size_arg,
                   help="refuse (too_large) allocations above SIZE, e.g. 8G; 'off' for no limit "
                        "(default: 80%% of the memory available at start)")
    p.add_argument("--threads", default=None, metavar="N|auto", type=_threads_arg,
                   help="torch CPU threads (default: auto, measured: 1 or all cores, whichever is faster now)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="persist results across runs in DIR")
    p.add_argument("--cache-size", default=None, metavar="SIZE", type=_size_arg,
                   help="keep the --cache-dir under SIZE (e.g. 20G), least recently used results removed first")
    p.add_argument("--events", choices=["jsonl"], default=None, help="stream events as JSON lines")
    p.add_argument("--events-file", default=None, metavar="FILE", help="write events there instead of stdout")
    p.add_argument("--record", default=None, metavar="FILE", help="write the run record (JSON) to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    _add_plugin_args(p)

    p = sub.add_parser("validate", help="check a workflow without running it")
    p.add_argument("workflow")
    _add_param_args(p)
    p.add_argument("--json", action="store_true", help="print problems as a JSON list")
    _add_plugin_args(p)

    p = sub.add_parser("graph", help="print a workflow as a Mermaid or dot diagram")
    p.add_argument("workflow")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    _add_plugin_args(p)

    p = sub.add_parser("nodes", help="list node types")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="print the node reference (docs/nodes.md)")
    _add_plugin_args(p)

    p = sub.add_parser("schema", help="print the JSON Schema of workflows (with every node type)")
    _add_plugin_args(p)

    add_batch_parser(sub)

    p = sub.add_parser("errors", help="list every error code with its cause and fix")
    p.add_argument("--markdown", action="store_true", help="print docs/errors.md")
    _add_plugin_args(p)

    p = sub.add_parser("convert", help="write safetensors copies of a model's pickle weights (prints their sha256)")
    p.add_argument("model", help="a model folder or a .bin/.pt/.pth/.ckpt file")
    p.add_argument("--out", default=None, metavar="PATH", help="copy the converted model there instead (a new path)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    p = sub.add_parser("cache", help="inspect, check or trim a --cache-dir")
    p.add_argument("action", choices=["info", "verify", "prune"],
                   help="info: entries and size; verify: check every checksum (--repair removes bad entries); "
                        "prune: remove least recently used entries until under --max-size (default: all)")
    p.add_argument("--cache-dir", required=True, metavar="DIR")
    p.add_argument("--max-size", default="0", metavar="SIZE", type=_size_arg, help="prune down to SIZE (e.g. 5G)")
    p.add_argument("--repair", action="store_true", help="verify: remove the entries that fail")
    p.add_argument("--json", action="store_true")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    _add_serve_parser(sub)

    p = sub.add_parser("plugins", help="list plugins, their node types and load errors")
    p.add_argument("--json", action="store_true")
    _add_plugin_args(p)
    return parser


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run a job queue over HTTP with a live web page (docs/server.md)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; any other "
                                                       "needs a token)")
    p.add_argument("--port", default=8188, type=int, help="port (default: 8188)")
    p.add_argument("--token", default=None, help="bearer token for /api/* (default: $REELGRAPH_TOKEN; on loopback "
                                                 "without one, a random token is made and printed)")
    p.add_argument("--state-dir", default="reelgraph-state", metavar="DIR",
                   help="queue database, job folders, events and cache (default: ./reelgraph-state)")
    p.add_argument("--workers", default=1, type=int, metavar="N", help="jobs run at once (default: 1)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR", dest="allow_paths",
                   help="also let workflows read and write under DIR, e.g. a models folder (repeatable)")
    p.add_argument("--max-body", default="16M", metavar="SIZE", type=_size_arg,
                   help="largest request body (default: 16M); larger ones get 413 unread")
    p.add_argument("--body-timeout", default=30.0, type=float, metavar="SECONDS",
                   help="answer 408 when a client stops sending its body this long (default: 30)")
    p.add_argument("--cache-size", default=None, metavar="SIZE", type=_size_arg,
                   help="keep the shared disk cache under SIZE (default: unbounded)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _add_plugin_args(p)


def _cmd_serve(args: argparse.Namespace, engine: Engine | None) -> int:
    from pathlib import Path

    from .server import ServeError, ServerConfig, resolve_token, serve

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1..65535, got {args.port}")
    if args.max_body in (None, "auto") or args.cache_size == "auto":
        raise UsageError("--max-body and --cache-size want a size such as 16M")
    state_dir = Path(args.state_dir).resolve()
    try:
        token, generated = resolve_token(args.host, args.token, state_dir)
        config = ServerConfig(state_dir, token, args.host, args.port, args.workers, tuple(args.plugin),
                              tuple(str(Path(p).resolve()) for p in args.allow_paths), int(args.max_body),
                              args.body_timeout, args.cache_size)
        return serve(config, token_generated=generated, log_level=args.log_level)
    except ServeError as exc:
        raise UsageError(str(exc)) from None


def parse_sets(sets: Sequence[str], workflow: Any) -> dict[str, Any]:
    """Turn ``NAME=VALUE`` strings into parameter values (JSON-typed parameters parse their text)."""
    wf, _, _ = read_workflow(workflow)
    values: dict[str, Any] = {}
    for item in sets:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--set wants NAME=VALUE, got {item!r}")
        value: Any = text
        spec = wf.params.get(name) if wf is not None else None
        if spec is not None and spec.type == "json":
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
        values[name] = value
    return values


def _print_problems(problems: list[Problem], as_json: bool, stream: TextIO) -> None:
    if as_json:
        stream.write(json.dumps([p.to_dict() for p in problems], indent=2) + "\n")
        return
    stream.write(f"workflow is invalid: {len(problems)} problem(s)\n")
    for p in problems:
        stream.write(f"  - {p}\n")


def _cmd_validate(args: argparse.Namespace, engine: Engine) -> int:
    problems = engine.validate(args.workflow, parse_sets(args.sets, args.workflow), out_dir=args.out,
                               allow_paths=args.allow_paths)
    if problems:
        _print_problems(problems, args.json, sys.stdout)
        return EXIT_INVALID
    print("[]" if args.json else f"{args.workflow}: valid")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace, engine: Engine) -> int:
    from .events import TerminalProgress, jsonl_sinks

    if args.threads is not None:
        os.environ["REELGRAPH_THREADS"] = args.threads  # read by the nodes that use torch

    sinks, events_stream = jsonl_sinks(args.events, args.events_file)
    if not args.quiet:
        sinks.append(TerminalProgress(sys.stderr))
    report = sys.stderr if args.events == "jsonl" and not args.events_file else sys.stdout
    result = None
    try:
        result = engine.run(args.workflow, parse_sets(args.sets, args.workflow), args.output,
                            out_dir=args.out, allow_paths=args.allow_paths, overwrite=args.overwrite,
                            max_memory=args.max_memory,
                            events=sinks)
        for name, value in result.outputs.items():
            report.write(f"{name} = {_short(value)}\n")
        return EXIT_OK
    except WorkflowInvalid as exc:
        _print_problems(exc.problems, False, sys.stderr)
        return EXIT_INVALID
    except NodeFailed as exc:
        result = exc.result  # type: ignore[assignment]
        sys.stderr.write(f"error: {exc}\n")
        if args.debug and exc.__cause__ is not None:
            import traceback

            traceback.print_exception(exc.__cause__, file=sys.stderr)
        return EXIT_FAILED
    except RunInterrupted as exc:
        result = exc.result  # type: ignore[assignment]
        sys.stderr.write(f"interrupted{f' during node {exc.node!r}' if exc.node else ''}; "
                         "finished results are kept in the cache\n")
        return EXIT_INTERRUPTED
    finally:
        if events_stream is not None:
            events_stream.close()
        if args.record and result is not None:
            atomic_write_text(args.record, json.dumps(result.to_dict(), indent=2, default=str))


def _short(value: Any) -> str:
    """A result value as a line shows it: floats to 4 significant digits, long values cut."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and all(isinstance(v, float) for v in value.values()):
        value = {k: float(f"{v:.4g}") for k, v in value.items()}
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _cmd_graph(args: argparse.Namespace, engine: Engine) -> int:
    from .diagram import render

    wf, problems, _ = read_workflow(args.workflow)
    if wf is None:
        _print_problems(problems, False, sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(render(wf, args.format))
    return EXIT_OK


def _cmd_nodes(args: argparse.Namespace, engine: Engine) -> int:
    from .docs import node_reference_markdown, node_type_summary

    types = list(engine.registry)
    if args.markdown:
        sys.stdout.write(node_reference_markdown(types))
    elif args.json:
        sys.stdout.write(json.dumps([node_type_summary(nt) for nt in types], indent=2) + "\n")
    else:
        for nt in types:
            ins = ", ".join(n + ("" if p.required else "?") for n, p in nt.inputs.items())
            outs = ", ".join(nt.outputs)
            print(f"{nt.name:<24} [{nt.category}] ({ins}) -> ({outs})")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace, engine: Engine) -> int:
    from .schema import workflow_schema

    sys.stdout.write(json.dumps(workflow_schema(engine.registry), indent=2) + "\n")
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace, engine: Engine) -> int:
    conflicts = engine.registry.conflicts
    if args.json:
        data = {"plugins": [p.__dict__ for p in engine.plugins], "conflicts": conflicts,
                "shadowing": engine.registry.shadowing}
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        for p in engine.plugins:
            status = f"ERROR {p.error}" if p.error else f"{len(p.node_types)} node type(s)"
            print(f"{p.name}  ({p.source})  {status}")
            if p.node_types:
                print("    " + ", ".join(p.node_types))
        for name, owners in conflicts.items():
            print(f"conflict: node type {name!r} registered by {' and '.join(owners)}; neither is usable")
        for name, owners in engine.registry.shadowing.items():
            print(f"ignored: {' and '.join(owners)} registered {name!r}, a built-in node type's name")
    return EXIT_OK if not any(p.error for p in engine.plugins) and not conflicts else EXIT_INVALID


def _cmd_errors(args: argparse.Namespace, engine: Engine) -> int:
    from .docs import error_reference_markdown
    from .errors import FIXES, RUNTIME_CODES, VALIDATION_CODES

    if args.markdown:
        sys.stdout.write(error_reference_markdown())
    else:
        for code, cause in {**VALIDATION_CODES, **RUNTIME_CODES}.items():
            print(f"{code:<20} {cause}\n{'':<20} fix: {FIXES[code]}")
    return EXIT_OK


def _cmd_cache(args: argparse.Namespace, engine: Engine | None) -> int:
    from .cache import DiskCache
    from .memory import format_size

    if not os.path.isdir(args.cache_dir):
        raise UsageError(f"--cache-dir {args.cache_dir!r} is not a folder")
    cache = DiskCache(args.cache_dir)
    if args.action == "info":
        entries = cache.entries()
        info = {"entries": len(entries), "bytes": sum(e.nbytes for e in entries)}
        print(json.dumps(info) if args.json else f"{info['entries']} entries, {format_size(info['bytes'])}")
        return EXIT_OK
    if args.action == "verify":
        bad = cache.verify(remove=args.repair)
        if args.json:
            print(json.dumps({"bad": [e.key for e in bad], "removed": bool(args.repair)}))
        else:
            for entry in bad:
                print(f"bad: {entry.key}{' (removed)' if args.repair else ''}")
            print(f"{len(cache.entries())} entries checked; {len(bad)} bad")
        return EXIT_OK if not bad or args.repair else EXIT_FAILED
    removed = cache.prune(args.max_size or 0)
    freed = sum(e.nbytes for e in removed)
    print(json.dumps({"removed": len(removed), "bytes": freed}) if args.json
          else f"removed {len(removed)} entries ({format_size(freed)})")
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace, engine: Engine | None) -> int:
    from .nodes.convert import ConvertError, convert_lines

    try:
        lines = convert_lines(args.model, args.out)
    except ConvertError as exc:
        raise UsageError(str(exc)) from exc
    print("\n".join(lines))
    return EXIT_OK


COMMANDS = {
    "batch": cmd_batch,
    "cache": _cmd_cache,
    "errors": _cmd_errors,
    "run": _cmd_run,
    "validate": _cmd_validate,
    "graph": _cmd_graph,
    "nodes": _cmd_nodes,
    "schema": _cmd_schema,
    "plugins": _cmd_plugins,
    "serve": _cmd_serve,
}


def _check_usage(args: argparse.Namespace) -> None:
    """Refuse command-line mistakes before any work: folders that cannot be used. (A workflow file that cannot
    be read is reported as the workflow's ``bad_format`` problem, exit 1.)"""
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir is not None and os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise UsageError(f"--cache-dir {cache_dir!r} is a file, not a folder")
    if getattr(args, "cache_size", None) == "auto":
        raise UsageError("--cache-size wants a size such as 20G")
    for option in ("record", "events_file"):
        target = getattr(args, option, None)
        if target is not None and not os.path.isdir(os.path.dirname(os.path.abspath(target))):
            raise UsageError(f"--{option.replace('_', '-')} {target!r}: its folder does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reelgraph`` console script."""
    args = build_parser().parse_args(argv)
    try:
        _check_usage(args)
        if args.command == "convert":  # models only: no engine, no plugins
            return _cmd_convert(args, None)
        if args.command == "cache":
            return _cmd_cache(args, None)
        if args.command == "serve":  # builds its own engines (one per worker)
            return _cmd_serve(args, None)
        engine = Engine(args.plugin, cache_dir=getattr(args, "cache_dir", None),
                        cache_size=getattr(args, "cache_size", None))
        if args.command != "plugins":
            for info in engine.plugins:
                if info.error:
                    sys.stderr.write(f"warning: plugin {info.name} was skipped: {info.error}\n")
            for name, owners in engine.registry.conflicts.items():
                sys.stderr.write(f"warning: node type {name!r} is registered by {' and '.join(owners)}; "
                                 "neither is usable\n")
            for name, owners in engine.registry.shadowing.items():
                sys.stderr.write(f"warning: {' and '.join(owners)} registered {name!r}, a built-in node type's name; "
                                 "it is ignored (rename it, e.g. 'myplugin.{name}')\n")
        return COMMANDS[args.command](args, engine)
    except UsageError as exc:
        sys.stderr.write(f"reelgraph: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n(run with --debug for a traceback)\n")
        return EXIT_FAILED


def console() -> NoReturn:
    """The ``reelgraph`` console script and ``python -m reelgraph``: :func:`main`, then a prompt exit."""
    exit_promptly(main())


def exit_promptly(code: int) -> NoReturn:
    """End the process with ``code`` once its work is out, skipping the interpreter's teardown.

    With torch, diffusers and transformers imported (about 4,000 modules), Python's own exit spent 1.4 s here
    taking modules apart after a run had finished (bench/cold_start.py). Everything a command wrote is already
    closed (outputs are written atomically and fsynced); non-daemon threads are joined, ``atexit`` handlers run
    (logging's flush among them) and both standard streams are flushed before ``os._exit``. Calling
    :func:`main` from Python instead returns the code and leaves the process alone.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: the ordinary exit
        sys.exit(code)
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
