"""The project's own error types: every failure a user can cause ends in one of these."""

from __future__ import annotations


class CwpoError(Exception):
    """Base class of every error cwpo raises on purpose."""


class ConfigError(CwpoError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class DataError(CwpoError, ValueError):
    """Bad input data. The message names the file, the row (or id) and the problem.

    Args:
        problem: what is wrong, in words a user can act on.
        path: the file the row came from, when known.
        row: 0-based row (or line) number within ``path``.
        record_id: the record's ``id``, when known.
    """

    def __init__(self, problem: str, *, path: str | None = None, row: int | None = None, record_id: str | None = None):
        self.problem = problem
        self.path = path
        self.row = row
        self.record_id = record_id
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.record_id is not None:
            where.append(f"id {self.record_id!r}")
        return f"{', '.join(where)}: {self.problem}" if where else self.problem


# Errors a user causes with a bad argument or input: shown as one line, without a traceback (``--debug`` shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    CwpoError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def argument_error(err: Exception, command: str) -> ConfigError:
    """A command-line parser's error (jsonargparse's, raised with ``exit_on_error=False``) as one line, instead
    of the full usage text."""
    message = " ".join(str(err).split())
    return ConfigError(f"{message} ('{command} --help' lists the arguments)")


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and not isinstance(err, CwpoError):
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


_debug = False


def run_command(main, argv: list[str]) -> int:
    """Run a command's ``main(argv)``. A user error (a :class:`CwpoError`, a missing file or folder, one that
    cannot be read or written) prints ``error: <message>`` and a hint on stderr and returns 2; with ``--debug``
    anywhere in ``argv`` it is raised with its traceback instead."""
    import sys

    global _debug
    outer = _debug
    _debug = outer or "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as err:
        if _debug:
            raise
        print(f"error: {_describe(err)}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2
    finally:
        _debug = outer
