"""The errors circ raises for bad input.

Every error caused by what a user gave us (a file, a model, a pipeline, data) is a
:class:`CircError`; its message names the file, node, option or instruction at fault.
The command-line tools catch ``CircError`` in one place, print its message as one line
and exit with code 2. Anything else escaping is a bug in circ.
"""


class CircError(Exception):
    """Base class of every user-facing error."""


class ModelError(CircError):
    """A model file or graph is malformed, unsupported or inconsistent."""


class PipelineError(CircError):
    """A pipeline string, pass name or pass option is wrong."""


class DataError(CircError):
    """Input data (npz files, feeds) does not fit the graph."""


class BackendError(CircError):
    """A backend cannot lower or run a graph or program."""


class VerificationError(ModelError):
    """The graph breaks an IR invariant; the message names the node."""
