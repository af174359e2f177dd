"""reelgraph: a headless, plugin-based, typed node-graph engine for video diffusion.

The public API::

    from reelgraph import node, hookimpl, RunContext, run, validate, Engine

Importing this package never imports torch; node modules that need it import it when they run.
"""

from .api import Engine, read_workflow, run, validate
from .context import RunContext
from .errors import (
    NodeDefinitionError,
    NodeFailed,
    NodeInputError,
    Problem,
    ReelgraphError,
    RunInterrupted,
    WorkflowInvalid,
)
from .events import Event
from .executor import NodeRecord, RunResult
from .hookspecs import hookimpl
from .node import DEFAULT_OUTPUT, CheckContext, NodeType, node
from .paths import InputPath, OutputPath, path_input
from .registry import NodeRegistry
from .workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_OUTPUT",
    "CheckContext",
    "Engine",
    "Event",
    "InputPath",
    "NodeDefinitionError",
    "NodeFailed",
    "NodeInputError",
    "NodeRecord",
    "NodeRegistry",
    "NodeType",
    "OutputPath",
    "Problem",
    "ReelgraphError",
    "RunContext",
    "RunInterrupted",
    "RunResult",
    "Workflow",
    "WorkflowInvalid",
    "__version__",
    "hookimpl",
    "node",
    "path_input",
    "read_workflow",
    "run",
    "validate",
]
