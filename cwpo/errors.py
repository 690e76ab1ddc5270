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
