"""Structured problems and the exceptions that carry them.

Every problem the engine reports has a stable ``code`` (public contract: tools match on it), the node id and
input name it belongs to (when there is one) and a human message. Validation collects all problems before
raising, so a user fixes a workflow in one pass instead of one error at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Every validation code the engine emits, with what it means (docs/errors.md is generated from these).
VALIDATION_CODES: dict[str, str] = {
    "bad_format": "the document does not follow the workflow format (wrong JSON type, missing field, bad link)",
    "unknown_node_type": "no registered node type has this name",
    "node_type_conflict": "two plugins register this node type; neither is used until one is removed",
    "missing_input": "a required input of the node is not given",
    "unknown_input": "the node type has no input of this name",
    "type_mismatch": "the linked output's (or parameter's) type does not fit the input's type",
    "invalid_value": "a literal or parameter value breaks the input's type or constraints",
    "dangling_link": "a link names a node or an output that does not exist",
    "cycle": "links form a cycle; the message names the nodes on it",
    "unknown_param": "a parameter is referenced or set but not declared in `params`",
    "missing_param": "a declared parameter has no default and no value was given",
    "unknown_output": "a requested output does not exist",
    "path_not_allowed": "a file path leaves the allowed folders (workflow folder, output folder, --allow-path)",
}


@dataclass(frozen=True)
class Problem:
    """One located problem in a workflow: a stable code, where it is, and what is wrong."""

    code: str
    message: str
    node: str | None = None
    input: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """The JSON form printed by ``reelgraph validate --json``."""
        return asdict(self)

    def __str__(self) -> str:
        where = ""
        if self.node is not None:
            where = f"nodes.{self.node}" + (f".inputs.{self.input}" if self.input else "")
        elif self.input is not None:
            where = f"params.{self.input}"
        return f"{self.code}: {where + ': ' if where else ''}{self.message}"


class ReelgraphError(Exception):
    """Base class of every error the engine raises on purpose."""


class WorkflowInvalid(ReelgraphError):
    """The workflow did not validate; ``problems`` lists every problem found, in document order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"workflow is invalid ({len(problems)} problem(s)):\n{lines}")


#: Codes of errors raised while a workflow runs (``NodeFailed.code``).
RUNTIME_CODES: dict[str, str] = {
    "node_failed": "the node raised an unexpected error; the message says which",
    "invalid_value": "an input value was refused once the node could check it (e.g. against the loaded model)",
    "file_not_found": "a file an input names does not exist",
    "path_not_allowed": "a path that arrives by a link, or is computed while running, leaves the allowed folders",
    "model_load_failed": "a model source is missing, malformed, or holds weights that would need pickle",
    "video_decode_failed": "a video file does not decode",
    "too_large": "the frames or latents a node was about to allocate exceed the memory limit (--max-memory)",
    "interrupted": "the run was interrupted; finished results stay cached",
    "bad_output": "a node returned a value that is not of the type it declares (a bug in that node)",
    "worker_died": "batch: the Ray actor running this run died (it is restarted for the next runs)",
    "worker_error": "batch: the Ray actor raised outside the engine while running this run",
    "no_worker": "batch: no Ray actor could be started or reached to run this run",
    "internal_error": "batch: an unexpected error outside any node (the message has its type)",
}


#: How to fix each error, by code (for docs/errors.md and messages).
FIXES: dict[str, str] = {
    "bad_format": "Follow the format in docs/engine.md; `reelgraph schema` gives a JSON Schema for editors.",
    "unknown_node_type": "Check the spelling (a close match is suggested) or load the plugin that provides it "
                         "(`--plugin`, `reelgraph plugins`).",
    "node_type_conflict": "Uninstall or stop loading one of the two plugins named in the message.",
    "missing_input": "Give the input a literal, a link or a parameter; `reelgraph nodes` lists required inputs.",
    "unknown_input": "Remove the input or fix its name (a close match is suggested).",
    "type_mismatch": "Link an output of the type the input takes, or insert a node that converts it.",
    "invalid_value": "Use a value within the input's type and constraints (`reelgraph nodes --json` lists them).",
    "dangling_link": "Link to an existing node id and one of its outputs ('node_id.output').",
    "cycle": "Break the loop: a node cannot depend on its own output, directly or through others.",
    "unknown_param": "Declare the parameter under `params`, or fix the name in `--set` / the reference.",
    "missing_param": "Pass it with `--set name=value` (or `params=` in Python), or give it a default.",
    "unknown_output": "Request an existing 'node' or 'node.output'.",
    "path_not_allowed": "Move the file under the workflow's folder or the output folder, or add "
                        "`--allow-path DIR` (`allow_paths=` in Python) if you trust the workflow.",
    "too_large": "Lower frames/size, use chunking (`chunk_frames`) or context windows, or raise `--max-memory`.",
    "node_failed": "Read the message; `--debug` shows the traceback. Results of earlier nodes are cached.",
    "bad_output": "Report it to the node's plugin; the message names the output and what it returned.",
    "file_not_found": "Check the path; relative input paths resolve against the workflow file's folder.",
    "model_load_failed": "Point `source` at a diffusers folder with model_index.json and safetensors weights "
                         "(convert pickle checkpoints once, from a trusted copy).",
    "video_decode_failed": "Re-encode the file (e.g. to H.264 mp4) or check that it is a video.",
    "interrupted": "Run again: finished nodes come from the cache (persisted with `--cache-dir`).",
    "worker_died": "Re-run the batch: finished runs are skipped. Check the actor's memory (`--cpus-per-actor`, "
                   "fewer `--actors`) if it keeps dying.",
    "worker_error": "Re-run with `--executor local` to see the error in-process; check the Ray cluster's logs.",
    "no_worker": "Check `--address`, that the cluster has the CPUs/GPUs the actors ask for, and that reelgraph "
                 "is installed on its nodes.",
    "internal_error": "Report it with the manifest line; re-running the batch retries only unfinished runs.",
}


class NodeInputError(ReelgraphError, ValueError):
    """Raised by a node to refuse one of its inputs at run time, with a code from :data:`RUNTIME_CODES`.

    The engine turns it into a :class:`NodeFailed` that carries the same code and input name, so the
    error is located like a validation problem.
    """

    def __init__(self, message: str, input: str | None = None, code: str = "invalid_value") -> None:
        self.input = input
        self.code = code
        super().__init__(message)


class NodeOutputError(NodeInputError):
    """A node returned a value that is not of its declared output type (``bad_output``): the fault is the
    node's, so it is reported there rather than by whichever node would have received the value."""

    def __init__(self, message: str) -> None:
        super().__init__(message, input=None, code="bad_output")


class NodeFailed(ReelgraphError):
    """A node raised while running. Results of nodes that finished before it stay cached.

    ``code`` is ``node_failed`` for unexpected errors, or the code of a :class:`NodeInputError`;
    ``input`` names the refused input when the node said which.
    """

    def __init__(self, node: str, node_type: str, message: str, result: object | None = None,
                 code: str = "node_failed", input: str | None = None, plugin: str | None = None) -> None:
        self.node = node
        self.node_type = node_type
        self.message = message
        self.result = result
        self.code = code
        self.input = input
        self.plugin = plugin
        where = f", input {input!r}" if input else ""
        origin = f" from plugin {plugin}" if plugin and plugin != "builtin" else ""
        super().__init__(f"{code}: node {node!r} ({node_type}{origin}{where}): {message}")


class RunInterrupted(ReelgraphError):
    """The run was interrupted (SIGINT or :meth:`Engine.interrupt`); finished results stay cached."""

    code = "interrupted"

    def __init__(self, node: str | None = None, result: object | None = None) -> None:
        self.node = node
        self.result = result
        super().__init__("run interrupted" + (f" during node {node!r}" if node else ""))


class NodeDefinitionError(ReelgraphError, TypeError):
    """A node type is declared wrongly (raised at decoration time, naming the node and the field)."""


class PluginError(ReelgraphError):
    """A plugin could not be loaded or registered."""
