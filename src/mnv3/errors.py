"""One exception tree for mnv3.

Every ``Mnv3Error`` is a *user* error: something about the input (a checkpoint, an image, a
label file, a model directory, a flag) was wrong. Its message says what was wrong, what was
expected and what to do; the CLI prints it as one line and exits with ``exit_code``.
Anything else that escapes is our bug and keeps its traceback.
"""


class Mnv3Error(Exception):
    """Base class of all user-facing errors."""

    exit_code = 1


class UsageError(Mnv3Error):
    """Flags or arguments that do not fit together."""

    exit_code = 2


class DataError(Mnv3Error):
    """An image, label file, synsets file or dataset folder is missing or malformed."""

    exit_code = 3


class CheckpointError(Mnv3Error):
    """A checkpoint cannot be read or does not match any known network layout."""

    exit_code = 4


class ExportError(Mnv3Error):
    """Export to ONNX failed or the exported graph does not match PyTorch."""

    exit_code = 5


class BuildError(Mnv3Error):
    """Quantizing or compiling a model failed."""

    exit_code = 6


class BelowBudgetError(BuildError):
    """A reduced-precision build missed its accuracy budget (``mnv3.gate``); nothing written.
    Its own class so that ``mnv3 tune`` can tell a refusal for accuracy from an engine's."""


class ModelError(Mnv3Error):
    """A built model directory is missing, corrupt, of a newer format, or got an input it cannot take."""

    exit_code = 7


class BackendUnavailable(Mnv3Error):
    """The requested inference engine is not installed or cannot run on this machine."""

    exit_code = 8


class Interrupted(Mnv3Error):
    """The user interrupted a long operation (Ctrl-C); nothing partial was left behind."""

    exit_code = 130


class Mnv3Warning(UserWarning):
    """Something the user should know that does not stop the command (a suspicious dataset).
    The CLI prints it as one ``mnv3 <cmd>: warning:`` line on stderr."""
