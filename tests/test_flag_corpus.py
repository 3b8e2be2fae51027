"""The plan's flags against a reference corpus, and against the trace (issue 26, point 5).

For every case of :mod:`flag_corpus`, in a schema of its own on the test server:

- the static reading (:class:`runner.reading.Reader`, PostgreSQL's parser against the catalog)
  must flag the expected kind; a ``safe`` case must have no flag. Recall must be at least
  95 % and false flags at most 10 %; the figures are printed at the end of the run.
- the trace (:class:`runner.trace.Tracer`, the code ``plan --trace`` runs) runs the statement
  in a transaction that is rolled back, and must agree with the reading about what it
  rewrites (``relfilenode``) and which lock that blocks writes it takes on which table
  (``pg_locks``). A statement that cannot run in a transaction must be one the trace refuses.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy
from flag_corpus import BASE, CASES, FIGURES, Case

from runner import flags, pg_reading, reading, trace

RECALL_AT_LEAST = 0.95
FALSE_FLAGS_AT_MOST = 0.10


@pytest.fixture(scope="module")
def corpus_url(pg_admin_url: str) -> Iterator[str]:
    """One database for the corpus, dropped after it; each case works in a schema of its own."""
    name = "mr_test_flag_corpus"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    yield sqlalchemy.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _schema(index: int) -> str:
    return f"case_{index}"


def _static(url: str, schema: str, case: Case) -> tuple[list[flags.Flag], dict[str, str], set[str]]:
    """The reading: the flags, and the blocking lock and rewrites it predicts per table."""
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SET search_path TO {schema}")
            connection.commit()

            def existing() -> flags.Existing:
                return flags.read_existing(
                    connection, "postgresql", schema=schema, ignored=(), lock_timeout=case.timeout
                )

            found, _ = reading.Reader(existing()).step(case.statement)
            locks: dict[str, str] = {}
            rewrites: set[str] = set()
            for _, read in pg_reading.readings(reading.Reader(existing()), case.statement):
                assert read is not None, f"{case.name}: the parser could not read it"
                for table, mode in read.locks.items():
                    if pg_reading.MODES.index(mode) > pg_reading.MODES.index(locks.get(table, "AccessShareLock")):
                        locks[table] = mode
                rewrites |= read.rewrites
    finally:
        engine.dispose()
    return found, {t: m for t, m in locks.items() if m in pg_reading.BLOCKING}, rewrites


def _traced(url: str, schema: str, case: Case) -> tuple[dict[str, str], set[str]] | str:
    """The trace: the strongest blocking lock held per existing table, and the tables rewritten; or why not run."""
    parts = [text for text, _ in pg_reading.split(case.statement)]
    refused = next((why for part in parts if (why := trace.why_not_traceable(part)) is not None), None)
    if refused is not None:
        return refused
    tracer = trace.Tracer()
    with psycopg.connect(url) as connection:
        connection.execute(f"SET search_path TO {schema}")
        connection.commit()
        watcher = connection.cursor()
        tracer.begin(watcher)
        tracer.revision = case.name
        for part in parts:
            tracer.before()
            connection.execute(part.encode())  # bytes: no placeholder is read in the text
            tracer.after(watcher, part)
        connection.rollback()
    locks: dict[str, str] = {}
    rewrites: set[str] = set()
    for statement in tracer.statements:
        for table, mode, _ in statement.held:
            strongest = locks.get(table, "AccessShareLock")
            if pg_reading.MODES.index(mode) > pg_reading.MODES.index(strongest):
                locks[table] = mode
        rewrites |= set(statement.rewritten)
    return {t: m for t, m in locks.items() if m in pg_reading.BLOCKING}, rewrites


def test_the_corpus_is_big_enough_and_covers_every_kind() -> None:
    """At least 60 cases, names unique, every kind expected somewhere, and safe cases too."""
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.expected for case in CASES} == {*flags.KINDS, "safe"}


def test_flags_match_the_corpus_and_the_trace_agrees(corpus_url: str) -> None:
    """Recall >= 95 %, false flags <= 10 %, and the trace agrees with every reading it can run."""
    with psycopg.connect(corpus_url, autocommit=True) as admin:
        for index, case in enumerate(CASES):
            schema = _schema(index)
            admin.execute(f"CREATE SCHEMA {schema}")
            admin.execute(f"SET search_path TO {schema}")
            admin.execute((BASE + ";" + case.setup).replace("elsewhere", f"{schema}_elsewhere").encode())
    missed, false_flags, disagreements, not_traced = [], [], [], []
    for index, case in enumerate(CASES):
        schema = _schema(index)
        statement_case = Case(
            case.name, case.statement.replace("elsewhere", f"{schema}_elsewhere"), case.expected, timeout=case.timeout
        )
        found, predicted_locks, predicted_rewrites = _static(corpus_url, schema, statement_case)
        kinds = {flag.kind for flag in found}
        if case.expected == "safe" and kinds:
            false_flags.append(f"{case.name}: {sorted(kinds)}")
        elif case.expected != "safe" and case.expected not in kinds:
            missed.append(f"{case.name}: expected {case.expected}, got {sorted(kinds) or 'nothing'}")
        measured = _traced(corpus_url, schema, statement_case)
        if isinstance(measured, str):
            not_traced.append(case.name)
            continue
        measured_locks, measured_rewrites = measured
        if (measured_locks, measured_rewrites) != (predicted_locks, predicted_rewrites):
            disagreements.append(
                f"{case.name}: read {predicted_locks} rewrites {sorted(predicted_rewrites)}; "
                f"traced {measured_locks} rewrites {sorted(measured_rewrites)}"
            )
    should_flag = [case for case in CASES if case.expected != "safe"]
    safe = [case for case in CASES if case.expected == "safe"]
    recall = 1 - len(missed) / len(should_flag)
    false_rate = len(false_flags) / len(safe)
    FIGURES.append(
        f"plan flag corpus: {len(CASES)} cases; recall {recall:.1%} ({len(should_flag) - len(missed)} of "
        f"{len(should_flag)}), false flags {false_rate:.1%} ({len(false_flags)} of {len(safe)}); trace agrees on "
        f"{len(CASES) - len(not_traced) - len(disagreements)} of {len(CASES) - len(not_traced)} traceable cases "
        f"({len(not_traced)} cannot run in a transaction)"
    )
    assert recall >= RECALL_AT_LEAST, missed
    assert false_rate <= FALSE_FLAGS_AT_MOST, false_flags
    assert not disagreements, "\n".join(disagreements)
    assert not missed and not false_flags, (missed, false_flags)  # today's reading gets them all
