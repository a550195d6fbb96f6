"""The house rules, checked by walking every module's imports and calls.

Data flows one way: cli → modes → work → jobs → engine → (client | store). The store alone
runs SQL and touches asyncpg and the queue library (pgqueuer); the client and the store
never meet (only the composition root, ``runtime``, opens both); nothing imports the CLI;
the simulator shares only the status vocabulary. A new module must find its place in
:data:`RANK` or this test fails.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncsync"

#: Lower ranks never import higher ones. Same-rank imports are allowed only inside one
#: package (store → store), and the explicit rules below narrow things further.
RANK: dict[str, float] = {
    # leaves: every layer may import them
    "asyncsync": 0, "errors": 0, "clock": 0, "status": 0, "metrics": 0, "logs": 0, "tasks": 0,
    "collector": 0,
    "readiness": 0.5,  # a leaf over metrics
    # values that cross the seams
    "records": 1, "options": 1, "accounts": 1.02, "parsers": 1.05, "progress": 1,
    "seams": 1.1, "tables": 1.15, "report": 1.2, "overview": 1.3, "agreement": 1.3,
    # the two sides, and the engine between them
    "client": 2, "store": 2, "engine": 2,
    "jobs": 3,
    "work": 3.5,  # units of work and their dispatch: above the jobs, below the modes
    "runtime": 4,
    "modes": 5,
    "flags": 6,
    "cli": 7,
    "__main__": 8,
    "simulator": -1,  # apart: shares only `status`
}  # fmt: skip


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def top(module: str) -> str:
    """The rank key of ``asyncsync.x.y``: ``x`` (or ``asyncsync`` for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(module: str, path: Path) -> Iterator[str]:
    """Every module imported anywhere in the file (lazy imports included), absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            for alias in node.names:  # `from . import metrics` imports a module
                yield f"{base}.{alias.name}"


def internal(names: Iterator[str]) -> set[str]:
    known = {m for m, _ in modules()}
    return {n for n in names if n in known}


def layer_violations(module: str, path: Path) -> Iterator[str]:
    me = top(module)
    if me not in RANK:
        yield f"{module}: place it in RANK"
        return
    for other in sorted(internal(imports(module, path))):
        them = top(other)
        if them == me:
            if me == "modes" and "asyncsync.modes" not in (module, other):
                yield f"{module} imports another mode, {other}: share through jobs"
        elif me == "simulator":
            if them != "status":
                yield f"the simulator imports {other}: only status is shared"
        elif them == "simulator" and me != "modes":
            yield f"{module} imports the simulator"
        elif RANK[them] >= RANK[me]:
            yield f"{module} (rank {RANK[me]}) imports {other} (rank {RANK[them]})"
        elif them in ("client", "store") and me != "runtime":
            yield f"{module} imports {other}: only runtime opens the client and the store"
        elif them == "cli" and me != "__main__":
            yield f"{module} imports the CLI"


#: What a connection or a pool runs SQL with (a plain ``execute(...)`` call is the modes'
#: dispatcher; ``x.execute(...)`` is a statement).
SQL_METHODS = {
    "sql", "fetch", "fetchval", "fetchrow", "execute", "executemany",
    "copy_records_to_table", "copy_to_table", "copy_from_table", "copy_from_query",
}  # fmt: skip


def sql_violations(module: str, path: Path) -> Iterator[str]:
    if top(module) == "store":
        return
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names.append(getattr(node, "module", None) or "")
            if any(n.split(".")[0] == "asyncpg" for n in names):
                yield f"{module} imports asyncpg"
            if any(n.split(".")[0] == "pgqueuer" for n in names):
                yield f"{module} imports the queue library"
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "sql":
                yield f"{module} line {node.lineno} runs SQL (sql)"
            elif isinstance(func, ast.Attribute) and func.attr in SQL_METHODS:
                yield f"{module} line {node.lineno} runs SQL ({func.attr})"


def test_data_flows_one_way() -> None:
    found = [v for module, path in modules() for v in layer_violations(module, path)]
    assert found == []


def test_only_the_store_speaks_sql() -> None:
    found = [v for module, path in modules() for v in sql_violations(module, path)]
    assert found == []


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """Relative, lazy and `from . import` imports are seen, and a violation is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import asyncpg\n"
        "def f(pool):\n    from ..store import orders\n    from .. import cli\n"
        "    conn.execute('DELETE FROM x')\n"
        "    return pool.fetch(sql('x'))\n"
    )
    found = set(imports("asyncsync.engine.bad", bad))
    assert {"asyncsync.store", "asyncsync.store.orders", "asyncsync.cli"} <= found
    layers = list(layer_violations("asyncsync.engine.bad", bad))
    assert any("imports asyncsync.store" in v for v in layers)
    assert any("imports asyncsync.cli" in v for v in layers)
    sql = list(sql_violations("asyncsync.engine.bad", bad))
    assert len(sql) == 4  # asyncpg, execute, fetch, sql


def clock_violations(module: str, path: Path) -> Iterator[str]:
    """The wall clock is read through ``clock`` (the simulator keeps its own time)."""
    if module == "asyncsync.clock" or top(module) == "simulator":
        return
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("now", "utcnow", "today")
            and isinstance(node.func.value, ast.Attribute | ast.Name)
            and getattr(node.func.value, "attr", getattr(node.func.value, "id", ""))
            in ("datetime", "date")
        ):
            yield f"{module} line {node.lineno} reads the wall clock: use clock.utcnow"


def test_time_is_read_in_one_place(tmp_path: Path) -> None:
    found = [v for module, path in modules() for v in clock_violations(module, path)]
    assert found == []
    bad = tmp_path / "bad.py"
    bad.write_text("import datetime as dt\nx = dt.datetime.now(dt.UTC)\ny = dt.date.today()\n")
    assert len(list(clock_violations("asyncsync.engine.bad", bad))) == 2


def test_the_exception_tree_is_drawn_whole() -> None:
    """Every class of ``errors`` stands in its docstring's tree, under one of its bases."""
    import re

    from asyncsync import errors

    tree = (errors.__doc__ or "").split("::\n", 1)[1].split('\n"""', 1)[0]
    drawn: dict[str, str] = {}  # name -> the name drawn one level above it
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        found = re.match(r"^([ │├└─]*)([A-Z]\w+)", line)
        if found is None:
            continue
        column, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        drawn[name] = stack[-1][1] if stack else ""
        stack.append((column, name))
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.AsyncsyncError)
    }
    assert sorted(drawn) == sorted(classes)
    for name, parent in drawn.items():
        bases = {b.__name__ for b in classes[name].__bases__} - {"Exception"}
        assert parent in bases if parent else not bases, name  # only the root has no parent
