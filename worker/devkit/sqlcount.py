"""Count the SQL statements an engine sends (statement budgets in tests and benchmark B5)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event

Statement = tuple[str, Any]


@contextlib.contextmanager
def counting_statements(engine: Engine) -> Iterator[list[Statement]]:
    """Collect (statement, parameters) of every cursor execution on ``engine`` inside the block."""
    statements: list[Statement] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def statement_kinds(statements: list[Statement]) -> dict[str, int]:
    """How many statements of each leading keyword (SELECT, UPDATE, ...)."""
    return dict(Counter(st.lstrip().split(None, 1)[0].upper() for st, _p in statements))
