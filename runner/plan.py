"""``plan``: what an upgrade will do, and what its SQL will lock, before anything runs.

The drivers render each pending step's SQL without running it (Alembic's
offline mode, Django's ``sqlmigrate``); this module reads that SQL for the
statements that stop production traffic on PostgreSQL: an ``ALTER TABLE`` on a
table that already exists takes an ``ACCESS EXCLUSIVE`` lock (reads and writes
wait), a type change may rewrite the table under it, a ``CREATE INDEX`` without
``CONCURRENTLY`` blocks writes while it builds (PostgreSQL docs, "13.3.1.
Table-Level Locks" and the ``ALTER TABLE`` and ``CREATE INDEX`` pages). A
reading of text, not a parse: it flags what it recognises and never claims a
statement is safe. ``plan --trace`` measures instead of reading.

The document (``--output json``) has the schema in ``docs/plan.schema.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.trace import BLOCKS_WRITES

# 2: a step's revision is under "revision", as in every document and log event; "id" repeats it until version 3.
SCHEMA_VERSION = 2
_STATEMENT_SHOWN_CHARS = 200


@dataclass(frozen=True)
class Flag:
    """One statement that locks, rewrites or destroys something that exists before the upgrade.

    Attributes:
        kind: ``rewrite``, ``locks_reads_and_writes``, ``blocks_writes``, ``scans``, ``destroys`` or ``data``.
        table: the existing table it concerns.
        detail: one sentence for a reviewer.
        statement: the statement, shortened.
    """

    kind: str
    table: str
    detail: str
    statement: str


@dataclass
class PlannedStep:
    """One pending step as the plan shows it.

    Attributes:
        revision: its id.
        message: its one-line description.
        transactional: it runs inside a transaction (no ``autocommit_block``, Django ``atomic``, not MySQL DDL).
        sql: its SQL, rendered offline; ``None`` when it cannot be.
        not_rendered: why not, when ``sql`` is ``None`` (it reads data, or runs Python).
        irreversible: why it cannot be reverted, if it cannot.
        flags: what its SQL locks or rewrites (:func:`flags_of`).
        trace: ``plan --trace``: its statements, with the locks and rewrites measured (:func:`runner.trace.report`).
        not_traced: why ``--trace`` did not run it.
    """

    revision: str
    message: str
    transactional: bool
    sql: str | None
    not_rendered: str | None = None
    irreversible: str | None = None
    flags: list[Flag] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    not_traced: str | None = None


_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_STATEMENT_END = re.compile(r";[ \t]*(?:\n|$)")
_NAME = r'(?:"[^"]+"|`[^`]+`|[\w$]+)'
_QUALIFIED = rf"(?P<table>{_NAME}(?:\s*\.\s*{_NAME})*)"
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_QUALIFIED}\s*(?P<rest>.*)$", re.I | re.S)
_CREATE_INDEX = re.compile(
    rf"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?P<concurrently>CONCURRENTLY\s+)?.*?\bON\s+(?:ONLY\s+)?{_QUALIFIED}",
    re.I | re.S,
)
_CREATE_TABLE = re.compile(
    rf"^CREATE\s+(?:UNLOGGED\s+|TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_QUALIFIED}", re.I
)
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{_QUALIFIED}", re.I)
_TRUNCATE = re.compile(rf"^TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?{_QUALIFIED}", re.I)
_DATA = re.compile(
    rf"^(?:UPDATE\s+(?:ONLY\s+)?{_QUALIFIED}|DELETE\s+FROM\s+(?:ONLY\s+)?{_QUALIFIED.replace('table', 'dtable')})",
    re.I,
)


def statements(sql: str) -> list[str]:
    """The statements of rendered SQL, comments removed, in order (split at a ``;`` that ends a line)."""
    text = _COMMENT.sub("", sql)
    return [part.strip() for part in _STATEMENT_END.split(text) if part.strip()]


def _bare(name: str) -> str:
    """The table part of a possibly qualified, possibly quoted name; unquoted names fold to lower case."""
    last = re.split(r"\s*\.\s*(?=(?:[^\"`]|\"[^\"]*\"|`[^`]*`)*$)", name)[-1]
    if last[:1] in '"`':
        return last[1:-1]
    return last.lower()


def created_tables(sql: str) -> set[str]:
    """The tables ``sql`` creates."""
    return {_bare(m.group("table")) for s in statements(sql) if (m := _CREATE_TABLE.match(s))}


def flags_of(sql: str, existing: set[str], *, family: str, ignored: Iterable[str] = ()) -> list[Flag]:
    """What the statements of ``sql`` lock, rewrite or destroy among the ``existing`` tables.

    Args:
        sql: one step's rendered SQL.
        existing: the tables there before the upgrade (bare names), without the ones earlier steps create.
        family: ``postgresql``, ``mysql`` or ``sqlite``: the lock wording follows the server.
        ignored: tables the tool itself writes (the version table, ``django_migrations``, the ledger).

    Returns:
        The flags, in statement order; the same warning about the same table once (a Django operation
        renders several statements on one table: AddField with a default is two ALTER TABLEs).
    """
    skip = {name.lower() for name in ignored}
    found: list[Flag] = []
    said: set[tuple[str, str, str]] = set()
    for statement in statements(sql):
        flag = _flag(statement, family)
        if flag is not None and flag.table in existing and flag.table.lower() not in skip:
            if (flag.kind, flag.table, flag.detail) not in said:
                found.append(flag)
            said.add((flag.kind, flag.table, flag.detail))
    return found


def _shown(statement: str) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= _STATEMENT_SHOWN_CHARS else text[: _STATEMENT_SHOWN_CHARS - 1] + "…"


def _flag(statement: str, family: str) -> Flag | None:
    """The flag of one statement, or None when it touches no existing table in a way worth a reviewer's look."""
    shown = _shown(statement)
    if match := _ALTER_TABLE.match(statement):
        return _alter_flag(_bare(match.group("table")), match.group("rest"), family, shown)
    if (match := _CREATE_INDEX.match(statement)) and not match.group("concurrently"):
        table = _bare(match.group("table"))
        if family == "postgresql":
            detail = (
                f"CREATE INDEX without CONCURRENTLY: writes to {table} wait (SHARE lock) until the index is built; "
                "CREATE INDEX CONCURRENTLY outside a transaction does not block them"
            )
        else:
            detail = f"builds an index on {table}; on a large table, check the server's online-DDL rules"
        return Flag("blocks_writes", table, detail, shown)
    if match := _DROP_TABLE.match(statement):
        table = _bare(match.group("table"))
        return Flag("destroys", table, f"drops {table} and its rows", shown)
    if match := _TRUNCATE.match(statement):
        table = _bare(match.group("table"))
        return Flag("destroys", table, f"empties {table} under an ACCESS EXCLUSIVE lock", shown)
    if match := _DATA.match(statement):
        table = _bare(match.group("table") or match.group("dtable"))
        return Flag("data", table, f"changes rows of {table}: row locks, and a long statement on a large table", shown)
    return None


# What the rest of an ALTER TABLE on PostgreSQL says: the first rule that matches decides; None: no flag.
_ALTER_RULES: list[tuple[re.Pattern[str], str | None, str]] = [
    (re.compile(r"^VALIDATE\s+CONSTRAINT\b"), None, ""),  # SHARE UPDATE EXCLUSIVE: reads and writes go on
    (
        re.compile(r"\bALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b"),
        "rewrite",
        "changes a column's type: may rewrite {table} and its indexes, under an ACCESS EXCLUSIVE lock "
        "(reads and writes wait throughout)",
    ),
    (
        re.compile(r"\bSET\s+NOT\s+NULL\b"),
        "scans",
        "SET NOT NULL reads every row of {table} under an ACCESS EXCLUSIVE lock "
        "(a valid CHECK constraint first avoids the scan)",
    ),
    (
        re.compile(r"\bADD\s+(?:CONSTRAINT\s+\S+\s+)?(?:FOREIGN\s+KEY|CHECK)\b(?!.*\bNOT\s+VALID\b)", re.S),
        "scans",
        "adds a constraint that checks every row of {table} while it holds its lock "
        "(NOT VALID, then VALIDATE CONSTRAINT, does not block)",
    ),
    (
        re.compile(r"\bDROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b|DEFAULT\b|NOT\b|IDENTITY\b|EXPRESSION\b)\S+"),
        "destroys",
        "drops a column of {table} (its data is gone), under an ACCESS EXCLUSIVE lock",
    ),
    (
        re.compile(r""),
        "locks_reads_and_writes",
        "ALTER TABLE takes an ACCESS EXCLUSIVE lock on {table}: reads and writes wait for it, "
        "and it waits for every open transaction that touched the table",
    ),
]


def _alter_flag(table: str, rest: str, family: str, shown: str) -> Flag | None:
    if family == "sqlite":
        return None  # one writer at a time anyway: there is no concurrent traffic to block
    if family != "postgresql":
        detail = f"ALTER TABLE on {table}: MySQL may copy the table and block writes; check its online-DDL rules"
        return Flag("locks_reads_and_writes", table, detail, shown)
    upper = " ".join(rest.upper().split())
    for pattern, kind, detail in _ALTER_RULES:
        if pattern.search(upper):
            return None if kind is None else Flag(kind, table, detail.format(table=table), shown)
    return None


def document(
    *,
    traced: bool = False,
    tool: str,
    database: str,
    current: Sequence[str],
    target: Sequence[str],
    steps: Sequence[PlannedStep],
) -> dict[str, Any]:
    """The plan as a document (schema version :data:`SCHEMA_VERSION`, ``docs/plan.schema.json``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "traced": traced,
        "tool": tool,
        "database": database,
        "current": list(current),
        "target": list(target),
        "pending": [
            {
                "revision": step.revision,
                "id": step.revision,
                "message": step.message,
                "transactional": step.transactional,
                "sql": step.sql,
                "not_rendered": step.not_rendered,
                "irreversible": step.irreversible,
                "flags": [
                    {"kind": f.kind, "table": f.table, "detail": f.detail, "statement": f.statement} for f in step.flags
                ],
                "trace": step.trace,
                "not_traced": step.not_traced,
            }
            for step in steps
        ],
    }


def text(plan: dict[str, Any]) -> str:
    """The plan for a terminal."""
    current = ", ".join(plan["current"]) or "nothing applied"
    if not plan["pending"]:
        return f"{plan['database']}: at {current}; nothing is pending.\n"
    lines = [f"{plan['database']}: at {current}; {len(plan['pending'])} pending ({plan['tool']}):", ""]
    for step in plan["pending"]:
        how = "in a transaction" if step["transactional"] else "OUTSIDE a transaction"
        lines.append(f"{step['id']}  {step['message']}  ({how})")
        for flag in step["flags"]:
            lines.append(f"  ! {flag['detail']}")
        if step["irreversible"]:
            lines.append(f"  ! irreversible: {step['irreversible']}")
        lines.extend(f"  ! traced: {note}" for note in _traced_notes(step))
        if step["sql"] is None:
            lines.append(f"  (SQL not shown: {step['not_rendered']})")
        else:
            lines.extend(f"    {line}" for line in step["sql"].strip().splitlines())
        lines.append("")
    return "\n".join(lines)


def markdown(plan: dict[str, Any]) -> str:
    """The plan as a pull-request comment (GitHub-flavoured Markdown)."""
    current = ", ".join(f"`{r}`" for r in plan["current"]) or "nothing applied"
    pending = plan["pending"]
    flagged = sum(1 for step in pending if step["flags"] or step["irreversible"])
    out = ["### Migration plan", ""]
    if not pending:
        out += [f"`{plan['database']}` is at {current}: nothing is pending.", ""]
        return "\n".join(out)
    out += [
        f"`{plan['database']}` is at {current}; **{len(pending)} pending** ({plan['tool']})"
        + (f", **{flagged} to review**." if flagged else ", nothing flagged."),
        "",
        "| revision | message | transaction | review |",
        "|---|---|---|---|",
    ]
    for step in pending:
        notes = [flag["detail"] for flag in step["flags"]]
        if step["irreversible"]:
            notes.append(f"irreversible: {step['irreversible']}")
        notes.extend(f"traced: {note}" for note in _traced_notes(step))
        review = "<br>".join(f"⚠️ {_cell(note)}" for note in notes) or "none"
        transaction = "yes" if step["transactional"] else "**no**"
        out.append(f"| `{step['id']}` | {_cell(step['message'])} | {transaction} | {review} |")
    out.append("")
    for step in pending:
        out += ["<details>", f"<summary><code>{step['id']}</code> SQL</summary>", ""]
        if step["sql"] is None:
            out += [f"Not rendered: {_cell(step['not_rendered'] or '')}", ""]
        else:
            out += ["```sql", step["sql"].strip(), "```", ""]
        out += ["</details>", ""]
    return "\n".join(out)


def _traced_notes(step: dict[str, Any]) -> list[str]:
    """What ``--trace`` measured of a step that a reviewer must see: blocking locks, rewrites, a step not run."""
    notes = [f"not run: {step['not_traced']}"] if step.get("not_traced") else []
    for traced in step.get("trace") or []:
        taken_now = {(lock["table"], lock["mode"]) for lock in traced["locks"]}
        # The step's own blocking locks while this statement runs; one taken by an earlier statement is "held".
        blocking = [
            f"{lock['mode']} on {lock['table']}" + ("" if (lock["table"], lock["mode"]) in taken_now else " (held)")
            for lock in traced["held"]
            if lock["mode"] in BLOCKS_WRITES and lock["since"] == step["revision"]
        ]
        rewritten = [f"rewrote {table}" for table in traced["rewritten"]]
        if blocking or rewritten:
            took = ", ".join([*blocking, *rewritten])
            notes.append(f"{took} ({traced['duration_seconds'] * 1000:.1f} ms): {traced['statement']}")
    return notes


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")
