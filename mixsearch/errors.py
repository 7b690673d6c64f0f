"""Errors that the command line turns into one clear line and an exit code.

Anything raised as a ``MixsearchError`` is a problem with the user's input or environment, not a
bug: the CLI prints ``error: <message>`` without a traceback. Other exceptions are real bugs and
keep their traceback.
"""


class MixsearchError(Exception):
    """A runtime problem the user can fix (missing data, unreachable storage...). Exit code 1."""

    exit_code = 1


class UsageError(MixsearchError):
    """The user's input is wrong (spec file, command-line argument). Exit code 2."""

    exit_code = 2


class SpecError(UsageError):
    """A spec or exported YAML file is invalid; the message names the file and the field path."""

    def __init__(self, source: str, field: str, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class ArchError(UsageError):
    """An architecture that cannot be built (no tokens, channels not divisible, ...)."""
