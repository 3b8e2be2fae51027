"""The plan's reading never breaks on what a revision renders: any SQL gives flags, or none, never a traceback.

A revision's SQL is the project's, not ours: odd names, statement forms the reading does not
know, text PostgreSQL's parser refuses. Property tests build statements from the pieces real
migrations use (qualified and quoted names, every ALTER TABLE form the reading knows and some
it does not) and from raw text, and read them against a schema with those tables, as ``plan``
would on PostgreSQL, MariaDB and SQLite.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import flags, pg_reading, reading

NAMES = st.sampled_from(["t", "o", '"T"', '"odd""name"', '"per%cent"', "public.t", "other.t", "missing", '"ü"'])
COLUMNS = st.sampled_from(["a", "b", '"C"', "zz", '"sp ace"'])
TYPES = st.sampled_from(
    [
        "int",
        "bigint",
        "varchar(20)",
        "varchar",
        "text",
        "numeric(12,2)",
        "numeric",
        "timestamptz",
        "serial",
        "uuid",
        "mood",
        "int[]",
        "double precision",
        "char(3)",
        "timestamp(3)",
    ]
)
DEFAULTS = st.sampled_from(
    [
        "",
        " DEFAULT 0",
        " DEFAULT now()",
        " DEFAULT gen_random_uuid()",
        " DEFAULT f(1, now())",
        " DEFAULT 'x'::text",
        " DEFAULT nextval('s')",
        " DEFAULT (1 + 2)",
        " NOT NULL",
        " NOT NULL DEFAULT 1",
        " PRIMARY KEY",
        " REFERENCES o (id)",
        " CHECK (x > 0)",
        " GENERATED ALWAYS AS IDENTITY",
        " GENERATED ALWAYS AS (a * 2) STORED",
        " UNIQUE",
        ' COLLATE "C"',
    ]
)


@st.composite
def statements(draw: st.DrawFn) -> str:
    table, column, other = draw(NAMES), draw(COLUMNS), draw(NAMES)
    kind, default = draw(TYPES), draw(DEFAULTS)
    forms = [
        f"ALTER TABLE {table} ADD COLUMN {column} {kind}{default}",
        f"ALTER TABLE IF EXISTS ONLY {table} ADD {column} {kind}{default}, DROP COLUMN {column}",
        f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind}",
        f"ALTER TABLE {table} ALTER {column} TYPE {kind} USING {column}::{kind}",
        f"ALTER TABLE {table} ALTER COLUMN {column} SET NOT NULL",
        f"ALTER TABLE {table} ALTER COLUMN {column} DROP DEFAULT",
        f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT 1",
        f"ALTER TABLE {table} ADD CONSTRAINT c CHECK ({column} IS NOT NULL) NOT VALID",
        f"ALTER TABLE {table} ADD CONSTRAINT c FOREIGN KEY ({column}) REFERENCES {other} (id)",
        f"ALTER TABLE {table} ADD PRIMARY KEY ({column})",
        f"ALTER TABLE {table} ADD CONSTRAINT c UNIQUE USING INDEX i",
        f"ALTER TABLE {table} VALIDATE CONSTRAINT c",
        f"ALTER TABLE {table} DROP CONSTRAINT c",
        f"ALTER TABLE {table} ADD CONSTRAINT c NOT NULL {column}",
        f"ALTER TABLE {table} RENAME COLUMN {column} TO z",
        f"ALTER TABLE {table} RENAME TO z",
        f"ALTER TABLE {table} SET SCHEMA other",
        f"ALTER TABLE {table} SET (fillfactor = 70), SET LOGGED",
        f"ALTER TABLE {table} ENABLE TRIGGER ALL",
        f"ALTER TABLE {table} ATTACH PARTITION {other} FOR VALUES IN (1)",
        "ALTER INDEX i RENAME TO j",
        "ALTER VIEW v RENAME COLUMN a TO b",
        "ALTER TYPE mood ADD VALUE 'x'",
        f"CREATE INDEX ON {table} ({column})",
        f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON ONLY {table} USING btree ({column}) WHERE {column} > 0",
        f"DROP INDEX IF EXISTS i, {other}",
        f"DROP TABLE IF EXISTS {table}, {other} CASCADE",
        f"DROP TRIGGER IF EXISTS tr ON {table}",
        f"DROP VIEW {table}",
        f"TRUNCATE {table}, {other} RESTART IDENTITY",
        f"UPDATE {table} SET {column} = 1",
        f"DELETE FROM {table} USING {other} WHERE {table}.id = 1",
        f"INSERT INTO {table} ({column}) SELECT 1",
        f"REINDEX TABLE {table}",
        "REINDEX (VERBOSE) INDEX CONCURRENTLY i",
        "REINDEX SCHEMA public",
        f"CLUSTER {table}",
        "CLUSTER",
        f"VACUUM (FULL, ANALYZE) {table}",
        f"CREATE TRIGGER tr BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION f()",
        f"COMMENT ON COLUMN {table}.{column} IS 'x'",
        f"COMMENT ON TABLE {table} IS NULL",
        f"CREATE TABLE {table} (LIKE {other}, {column} {kind}{default}, FOREIGN KEY ({column}) REFERENCES {other})",
        f"CREATE TABLE {table} PARTITION OF {other} FOR VALUES IN (1)",
        f"CREATE TABLE {table} AS SELECT * FROM {other}",
        "SET LOCAL lock_timeout = '2s'",
        "SET lock_timeout TO DEFAULT",
        "RESET lock_timeout",
        "SET lock_timeout = 0",
        "DO $$ BEGIN PERFORM 1; END $$",
        f"GRANT SELECT ON {table} TO PUBLIC",
        f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE",
    ]
    return draw(st.sampled_from(forms))


def existing(family: str) -> flags.Existing:
    """A schema with tables t and o (and a quoted one), as read_existing would return it."""
    columns = {
        "a": flags.Column("int4", (), False, False),
        "b": flags.Column("varchar", (20,), True, True),
        "C": flags.Column("numeric", (10, 2), True, False),
    }
    if family != "postgresql":
        return flags.Existing(family, {"t": {}, "o": {}})
    return flags.Existing(
        family,
        {"public.t": dict(columns), "public.o": {"id": flags.Column("int4", (), True, False)}, "public.T": {}},
        frozenset({"alembic_version"}),
        indexes={"public.i": "public.t"},
        volatility={"now": "s", "gen_random_uuid": "v", "f": "v"},
        binary_casts={("varchar", "text"), ("text", "varchar")},
        foreign_keys={("public.t", "c"): "public.o"},
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(statements(), min_size=1, max_size=5), st.sampled_from(["postgresql", "mysql", "sqlite"]))
def test_any_statement_is_read_without_a_traceback(parts: list[str], family: str) -> None:
    """Every built statement, alone or several in a step, gives flags of known kinds (or none)."""
    reader = reading.Reader(existing(family))
    shown, accepted = reader.step(";\n".join(parts) + ";\n", accepted={"destroys"})
    assert {flag.kind for flag in shown + accepted} <= set(flags.KINDS)
    assert all(flag.kind != "destroys" for flag in shown)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(statements(), min_size=1, max_size=4),
    st.text(st.characters(blacklist_characters=";\n\x00", blacklist_categories=("Cs",)), min_size=1, max_size=8),
)
def test_a_step_splits_into_its_statements_whatever_their_characters(parts: list[str], literal: str) -> None:
    """Each statement of a step comes back whole, with a non-ASCII or odd string literal before the next one.

    The parser's offsets count characters: read as bytes, a statement after 'é' was cut mid-character
    (a password in a revision's SQL made plan exit 70).
    """
    quoted = "'" + literal.replace("'", "''") + "'"
    with_literal = [f"COMMENT ON TABLE t IS {quoted}", *parts]
    assert [text for text, _ in pg_reading.split(";\n".join(with_literal))] == with_literal


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["postgresql", "mysql", "sqlite"]))
def test_any_text_is_read_without_a_traceback(text: str, family: str) -> None:
    """Text the parser refuses is read as text, flagged as such, never raised."""
    shown, _ = reading.Reader(existing(family)).step(text)
    assert all(not flag.parsed for flag in shown) or family == "postgresql"
