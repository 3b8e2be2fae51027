"""``plan``: what an upgrade will do, and what its SQL will lock, before anything runs.

The drivers render each pending step's SQL without running it (Alembic's
offline mode, Django's ``sqlmigrate``); :mod:`runner.flags` reads it, with
PostgreSQL's own parser, for what stops or breaks production traffic on the
tables that exist before the upgrade. ``plan --trace`` measures instead of
reading (:mod:`runner.trace`). This module is the plan's document, and its text
and Markdown forms.

The document (``--output json``) has the schema in ``docs/plan.schema.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.flags import KINDS, Flag, flags_document, risk
from runner.trace import BLOCKS_WRITES

# 3: flags by risk (KINDS), each with "parsed"; a step's "risk" and "accepted" flags; "id" is gone (use "revision").
SCHEMA_VERSION = 3
# GitHub refuses a comment over 65,536 characters; the markdown plan folds SQL to stay under it.
MARKDOWN_LIMIT = 60_000


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
        flags: what its SQL risks (:class:`runner.reading.Reader`).
        accepted: flags of a kind the step opts out of (a marker in its source, ``MIGRATION_ACCEPT_FLAGS``).
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
    accepted: list[Flag] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    not_traced: str | None = None


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
                "message": step.message,
                "risk": risk(f.kind for f in step.flags),
                "transactional": step.transactional,
                "sql": step.sql,
                "not_rendered": step.not_rendered,
                "irreversible": step.irreversible,
                "flags": flags_document(step.flags),
                "accepted": flags_document(step.accepted),
                "trace": step.trace,
                "blocked": None if step.trace is None else blocked(step.trace),
                "not_traced": step.not_traced,
            }
            for step in steps
        ],
    }


def blocked(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How long each existing table was closed to reads and to writes while the step ran, from its trace.

    A lock is held until the step's transaction ends, so a table stays closed through every statement
    after the one that took it: the sum of the durations of the statements during which it was held.

    Returns:
        ``{"table", "reads_seconds", "writes_seconds"}`` per table, in the order first closed.
    """
    seconds: dict[str, list[float]] = {}
    for row in trace:
        for table in row["blocks_writes"]:
            spent = seconds.setdefault(table, [0.0, 0.0])
            spent[1] += row["duration_seconds"]
            if table in row["blocks_reads"]:
                spent[0] += row["duration_seconds"]
    return [
        {"table": table, "reads_seconds": round(reads, 6), "writes_seconds": round(writes, 6)}
        for table, (reads, writes) in seconds.items()
    ]


def _blocked_line(step: dict[str, Any]) -> str | None:
    if not step.get("blocked"):
        return None
    return "traced: " + ", ".join(
        f"{b['table']} closed to writes for {b['writes_seconds'] * 1000:.1f} ms"
        + (f", to reads for {b['reads_seconds'] * 1000:.1f} ms" if b["reads_seconds"] else "")
        for b in step["blocked"]
    )


def text(plan: dict[str, Any]) -> str:
    """The plan for a terminal."""
    current = ", ".join(plan["current"]) or "nothing applied"
    if not plan["pending"]:
        return f"{plan['database']}: at {current}; nothing is pending.\n"
    lines = [f"{plan['database']}: at {current}; {len(plan['pending'])} pending ({plan['tool']}):", ""]
    for step in plan["pending"]:
        how = "in a transaction" if step["transactional"] else "OUTSIDE a transaction"
        lines.append(f"{step['revision']}  {step['message']}  ({how})")
        lines.append(f"  risk: {_summary(step)}")
        lines.extend(f"  ! {flag['kind']}: {flag['detail']}" for flag in step["flags"])
        lines.extend(f"  accepted {flag['kind']}: {flag['detail']}" for flag in step["accepted"])
        if step["irreversible"]:
            lines.append(f"  ! irreversible: {step['irreversible']}")
        lines.extend(f"  ! traced: {note}" for note in _traced_notes(step))
        if line := _blocked_line(step):
            lines.append(f"  ! {line}")
        if step["sql"] is None:
            lines.append(f"  (SQL not shown: {step['not_rendered']})")
        else:
            if step["not_rendered"]:
                lines.append(f"  (not in the SQL: {step['not_rendered']})")
            lines.extend(f"    {line}" for line in step["sql"].strip().splitlines())
        lines.append("")
    return "\n".join(lines)


def _not_read(step: dict[str, Any]) -> bool:
    """No SQL to read flags from: none rendered offline, and none taken from what a trace ran."""
    return not step["flags"] and step["sql"] is None and "read from the statements" not in (step["not_rendered"] or "")


def _summary(step: dict[str, Any]) -> str:
    """A step's risk in one line: each kind once, the most serious first, with its tables."""
    if _not_read(step):
        return "not read: its SQL cannot be rendered offline (plan --trace reads the statements it runs)"
    if not step["flags"]:
        return "none" + (f" ({len(step['accepted'])} accepted)" if step["accepted"] else "")
    tables: dict[str, list[str]] = {}
    for flag in step["flags"]:
        named = tables.setdefault(flag["kind"], [])
        named.extend(t for t in flag["table"].split(", ") if t not in named)
    return "; ".join(f"{kind} ({', '.join(tables[kind])})" for kind in KINDS if kind in tables)


def markdown(plan: dict[str, Any], *, limit: int = MARKDOWN_LIMIT) -> str:
    """The plan as a pull-request comment (GitHub-flavoured Markdown), at most ``limit`` characters.

    Per step: its risk summary, its flags, the trace table, and its SQL folded in ``<details>``.
    Over ``limit`` (GitHub refuses comments over 65,536 characters), the trace rows that take no lock
    others wait for and rewrite nothing are left out first, then the SQL too; the JSON plan has all of it.
    """
    for fold in ("none", "trace", "sql"):
        out = _markdown(plan, fold)
        if len(out) <= limit:
            return out
    note = (
        "\n\n*Cut here: the plan is longer than a pull-request comment can be; `plan --output json` has all of it.*\n"
    )
    return out[: limit - len(note)] + note


def _markdown(plan: dict[str, Any], fold: str) -> str:
    current = ", ".join(f"`{r}`" for r in plan["current"]) or "nothing applied"
    pending = plan["pending"]
    # A step whose SQL could not be read is to review as much as a flagged one.
    flagged = sum(1 for step in pending if step["flags"] or step["irreversible"] or _not_read(step))
    out = ["### Migration plan", ""]
    if not pending:
        out += [f"`{plan['database']}` is at {current}: nothing is pending.", ""]
        return "\n".join(out)
    out += [
        f"`{plan['database']}` is at {current}; **{len(pending)} pending** ({plan['tool']})"
        + (f", **{flagged} to review**." if flagged else ", nothing flagged."),
        "",
        "| revision | message | transaction | risk |",
        "|---|---|---|---|",
    ]
    for step in pending:
        transaction = "yes" if step["transactional"] else "**no**"
        shown_risk = f"⚠️ {step['risk']}" if step["risk"] else ("irreversible" if step["irreversible"] else "none")
        if _not_read(step):
            shown_risk = "❓ not read"
        out.append(f"| `{step['revision']}` | {_cell(step['message'])} | {transaction} | {shown_risk} |")
    out.append("")
    for step in pending:
        out += _markdown_step(step, plan["traced"], fold)
    if fold != "none":
        out += [
            "*Some trace rows (or the SQL) are left out to fit a pull-request comment; `plan --output json` has all.*",
            "",
        ]
    return "\n".join(out)


def _markdown_step(step: dict[str, Any], traced: bool, fold: str) -> list[str]:
    out = [f"#### `{step['revision']}` {_cell(step['message'])}", "", f"**Risk: {_summary(step)}**", ""]
    notes = [f"⚠️ **{flag['kind']}** `{flag['table']}`: {_cell(flag['detail'])}" for flag in step["flags"]]
    notes += [f"accepted **{flag['kind']}** `{flag['table']}`: {_cell(flag['detail'])}" for flag in step["accepted"]]
    if step["irreversible"]:
        notes.append(f"⚠️ irreversible: {_cell(step['irreversible'])}")
    if step.get("not_traced"):
        notes.append(f"⚠️ not traced: {_cell(step['not_traced'])}")
    if line := _blocked_line(step):
        notes.append(f"⏱️ {line}")
    if step["sql"] is not None and step["not_rendered"]:
        notes.append(f"not in the SQL: {_cell(step['not_rendered'])}")
    out += [f"- {note}" for note in notes] + ([""] if notes else [])
    rows = step.get("trace") or []
    if traced and rows:
        shown = [row for row in rows if fold == "none" or _blocking_row(row)]
        out += ["| statement | locks held | newly taken | ms | rewrite |", "|---|---|---|---|---|"]
        for row in shown:
            own = [lock for lock in row["held"] if lock["since"] == step["revision"] and lock["mode"] in BLOCKS_WRITES]
            earlier = {lock["table"] for lock in row["held"] if lock["since"] != step["revision"]}
            held = _strongest(own) + ([f"+{len(earlier)} tables from earlier revisions"] if earlier else [])
            taken = _strongest([lock for lock in row["locks"] if lock["mode"] in _SHOWN_MODES])
            out.append(
                f"| `{_cell(row['statement'])}` | {'<br>'.join(held) or '-'} | {'<br>'.join(taken) or '-'} "
                f"| {row['duration_seconds'] * 1000:.1f} | {', '.join(row['rewritten']) or '-'} |"
            )
        if len(shown) < len(rows):
            out.append(
                f"| *{_count(len(rows) - len(shown), 'statement')} left out: no lock that others wait for, "
                "no rewrite* | | | | |"
            )
        out.append("")
    if step["sql"] is None:
        out += [f"SQL not rendered: {_cell(step['not_rendered'] or '')}", ""]
    elif fold != "sql":
        out += ["<details>", "<summary>SQL</summary>", "", "```sql", step["sql"].strip(), "```", "", "</details>", ""]
    else:
        out += [f"SQL left out ({len(step['sql'])} characters).", ""]
    return out


# Locks worth a column: those that make some other session wait (not the row-level intents of DML and SELECT).
_SHOWN_MODES = frozenset({"ShareUpdateExclusiveLock"}) | BLOCKS_WRITES


def _strongest(locks: list[dict[str, Any]]) -> list[str]:
    """``MODE on TABLE``, the strongest mode per table only (pg_locks lists every mode a table is held in)."""
    from runner.pg_alter_table import MODES  # noqa: PLC0415  (pglast is loaded for PostgreSQL only)

    best: dict[str, str] = {}
    for lock in locks:
        if lock["table"] not in best or MODES.index(lock["mode"]) > MODES.index(best[lock["table"]]):
            best[lock["table"]] = lock["mode"]
    return [f"{mode} on {table}" for table, mode in best.items()]


def _blocking_row(row: dict[str, Any]) -> bool:
    """A row worth keeping in a folded table: it takes a lock that makes others wait, or rewrites a table."""
    return bool(row["rewritten"]) or any(lock["mode"] in _SHOWN_MODES for lock in row["locks"])


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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")
