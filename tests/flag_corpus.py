"""The plan's reference corpus of lock-safety cases (issue 26, point 5).

Each case is a statement, the schema it needs, and the flag kind a reviewer should see
(or ``safe``). Drawn from the PostgreSQL documentation ("ALTER TABLE" and its Notes on
rewrites, "13.3.1. Table-Level Locks", "CREATE INDEX", "DROP INDEX", "REINDEX",
"CLUSTER", "VACUUM", "CREATE TRIGGER", "COMMENT") and from the rules of the linters in
this field: squawk (adding-field-with-default, adding-required-field,
changing-column-type, constraint-missing-not-valid, adding-foreign-key-constraint,
require-concurrent-index-creation/deletion, disallowed-unique-constraint,
renaming-column/table, ban-drop-column/table), eugene (E1-E11: validating a table with
a new constraint, type changes that rewrite, SERIAL/GENERATED columns, dangerous locks
without a timeout), strong_migrations, and django-migration-linter's backward
incompatible migrations. The expectations are ours, written from those sources: where
they disagree (a ``COMMENT`` or a ``CREATE TYPE`` without a timeout takes no lock that
blocks traffic), the trace is the judge, and the case says why.

``timeout``: whether a ``lock_timeout`` applies, as the runner's default
``MIGRATION_DDL_LOCK_TIMEOUT=2`` makes it; the ``needs_lock_timeout`` cases run without.
"""

from __future__ import annotations

from dataclasses import dataclass

FIGURES: list[str] = []  # what test_flag_corpus measured; conftest's pytest_terminal_summary prints it

# The schema every case starts from: rows in every table, so that a scan or a rewrite has work to do.
BASE = """
CREATE TABLE t (id int PRIMARY KEY, a int, b text, c varchar(50), d numeric(10,2), e timestamp,
                f int NOT NULL DEFAULT 0, g int DEFAULT 0);
CREATE INDEX t_a ON t (a);
CREATE TABLE o (id int PRIMARY KEY);
INSERT INTO o SELECT generate_series(1, 10);
INSERT INTO t SELECT i, i, i::text, 'x' || i, i, now(), i, i FROM generate_series(1, 10) i;
CREATE TABLE n (id int, v text);
INSERT INTO n SELECT i, 'v' FROM generate_series(1, 10) i;
CREATE TABLE empty_t (id int PRIMARY KEY);
CREATE FUNCTION user_default() RETURNS int LANGUAGE plpgsql VOLATILE AS 'BEGIN RETURN 1; END';
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
"""


@dataclass(frozen=True)
class Case:
    """One lock-safety case.

    Attributes:
        name: what it is, unique.
        statement: the SQL of the revision (one or more statements).
        expected: the flag kind a reviewer must see, or ``safe``: no flag at all.
        setup: more schema, after :data:`BASE`.
        timeout: a ``lock_timeout`` applies (the runner's default).
        source: where the expectation comes from.
    """

    name: str
    statement: str
    expected: str
    setup: str = ""
    timeout: bool = True
    source: str = "PostgreSQL docs, ALTER TABLE"


CASES = [
    # -- rewrite: the table is written anew under ACCESS EXCLUSIVE ("ALTER TABLE", Notes) --
    Case("volatile default gen_random_uuid()", "ALTER TABLE t ADD COLUMN x uuid DEFAULT gen_random_uuid()", "rewrite"),
    Case("volatile default random()", "ALTER TABLE t ADD COLUMN x float8 DEFAULT random()", "rewrite"),
    Case(
        "volatile default clock_timestamp()",
        "ALTER TABLE t ADD COLUMN x timestamptz DEFAULT clock_timestamp()",
        "rewrite",
    ),
    Case(
        "volatile user function as default",
        "ALTER TABLE t ADD COLUMN x int DEFAULT user_default()",
        "rewrite",
        source="eugene E10",
    ),
    Case("add serial column", "ALTER TABLE t ADD COLUMN x serial", "rewrite", source="eugene E11"),
    Case(
        "add bigserial primary key", "ALTER TABLE n ADD COLUMN x bigserial PRIMARY KEY", "rewrite", source="eugene E11"
    ),
    Case(
        "add identity column",
        "ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS IDENTITY",
        "rewrite",
        source="eugene E11",
    ),
    Case(
        "add stored generated column",
        "ALTER TABLE t ADD COLUMN x int GENERATED ALWAYS AS (a * 2) STORED",
        "rewrite",
        source="eugene E11",
    ),
    Case("int to bigint", "ALTER TABLE t ALTER COLUMN a TYPE bigint", "rewrite", source="squawk changing-column-type"),
    Case("int to text", "ALTER TABLE t ALTER COLUMN a TYPE text", "rewrite", source="squawk changing-column-type"),
    Case("narrow varchar", "ALTER TABLE t ALTER COLUMN c TYPE varchar(20)", "rewrite", source="eugene E5"),
    Case("text to int with USING", "ALTER TABLE t ALTER COLUMN b TYPE int USING b::int", "rewrite"),
    Case("numeric scale change", "ALTER TABLE t ALTER COLUMN d TYPE numeric(10, 4)", "rewrite"),
    Case("int to smallint", "ALTER TABLE t ALTER COLUMN a TYPE smallint", "rewrite"),
    Case("text to varchar(10)", "ALTER TABLE t ALTER COLUMN b TYPE varchar(10)", "rewrite"),
    Case("SET UNLOGGED", "ALTER TABLE n SET UNLOGGED", "rewrite"),
    Case("CLUSTER", "CLUSTER t USING t_pkey", "rewrite", source="PostgreSQL docs, CLUSTER"),
    Case("VACUUM FULL", "VACUUM FULL t", "rewrite", source="PostgreSQL docs, VACUUM"),
    # -- scans: every row read under a lock that blocks writes --
    Case(
        "SET NOT NULL", "ALTER TABLE t ALTER COLUMN g SET NOT NULL", "scans", source="squawk adding-not-nullable-field"
    ),
    Case(
        "CHECK without NOT VALID",
        "ALTER TABLE t ADD CONSTRAINT a_positive CHECK (a > 0)",
        "scans",
        source="squawk constraint-missing-not-valid",
    ),
    Case(
        "FOREIGN KEY without NOT VALID",
        "ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES o (id)",
        "scans",
        source="squawk adding-foreign-key-constraint",
    ),
    Case("column with REFERENCES", "ALTER TABLE t ADD COLUMN o_id int REFERENCES o (id)", "scans", source="eugene E1"),
    Case("column with CHECK", "ALTER TABLE t ADD COLUMN x int DEFAULT 1 CHECK (x > 0)", "scans", source="eugene E1"),
    Case(
        "NOT NULL check validated in the same step then SET NOT NULL on a column without a default",
        "ALTER TABLE t ADD CONSTRAINT a_nn CHECK (a IS NOT NULL); ALTER TABLE t ALTER COLUMN a SET NOT NULL",
        "scans",
    ),
    # -- blocks_writes: an index built or dropped without CONCURRENTLY --
    Case(
        "CREATE INDEX", "CREATE INDEX t_b ON t (b)", "blocks_writes", source="squawk require-concurrent-index-creation"
    ),
    Case("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX t_id_a ON t (id, a)", "blocks_writes", source="eugene E6"),
    Case("CREATE INDEX USING hash", "CREATE INDEX t_b_hash ON t USING hash (b)", "blocks_writes"),
    Case("DROP INDEX", "DROP INDEX t_a", "blocks_writes", source="squawk require-concurrent-index-deletion"),
    Case("REINDEX TABLE", "REINDEX TABLE t", "blocks_writes", source="PostgreSQL docs, REINDEX"),
    Case("REINDEX INDEX", "REINDEX INDEX t_a", "blocks_writes", source="PostgreSQL docs, REINDEX"),
    Case(
        "ADD UNIQUE constraint",
        "ALTER TABLE t ADD CONSTRAINT t_c_unique UNIQUE (c)",
        "blocks_writes",
        source="squawk disallowed-unique-constraint",
    ),
    Case("ADD PRIMARY KEY", "ALTER TABLE n ADD PRIMARY KEY (id)", "blocks_writes", source="eugene E7"),
    # -- destroys --
    Case("DROP TABLE", "DROP TABLE n", "destroys", source="squawk ban-drop-table"),
    Case("DROP COLUMN", "ALTER TABLE t DROP COLUMN b", "destroys", source="squawk ban-drop-column"),
    Case("TRUNCATE", "TRUNCATE n", "destroys", source="PostgreSQL docs, TRUNCATE"),
    Case("DELETE without WHERE", "DELETE FROM n", "destroys"),
    Case("UPDATE without WHERE", "UPDATE t SET a = 0", "destroys"),
    # -- backward_incompatible: the running release breaks (expand/contract) --
    Case(
        "RENAME COLUMN", "ALTER TABLE t RENAME COLUMN b TO bb", "backward_incompatible", source="squawk renaming-column"
    ),
    Case("RENAME TABLE", "ALTER TABLE n RENAME TO n2", "backward_incompatible", source="squawk renaming-table"),
    Case(
        "NOT NULL column without default",
        "ALTER TABLE empty_t ADD COLUMN x int NOT NULL",
        "backward_incompatible",
        source="squawk adding-required-field",
    ),
    Case(
        "DROP DEFAULT of a NOT NULL column",
        "ALTER TABLE t ALTER COLUMN f DROP DEFAULT",
        "backward_incompatible",
        source="django-migration-linter",
    ),
    Case("SET SCHEMA", "ALTER TABLE n SET SCHEMA elsewhere", "backward_incompatible", setup="CREATE SCHEMA elsewhere"),
    # -- needs_lock_timeout: a brief lock that blocks traffic, no lock_timeout in force --
    Case(
        "add a column, no timeout",
        "ALTER TABLE t ADD COLUMN x int",
        "needs_lock_timeout",
        timeout=False,
        source="eugene E9",
    ),
    Case(
        "CREATE TRIGGER, no timeout",
        "CREATE TRIGGER t_stamp BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION stamp()",
        "needs_lock_timeout",
        timeout=False,
        source="PostgreSQL docs, CREATE TRIGGER",
    ),
    Case(
        "RENAME CONSTRAINT, no timeout",
        "ALTER TABLE t RENAME CONSTRAINT t_pkey TO t_key",
        "needs_lock_timeout",
        timeout=False,
        source="eugene E9",
    ),
    Case(
        "FOREIGN KEY NOT VALID, no timeout",
        "ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES o (id) NOT VALID",
        "needs_lock_timeout",
        timeout=False,
    ),
    Case(
        "new table referencing an existing one, no timeout",
        "CREATE TABLE child (id int, t_id int REFERENCES t (id))",
        "needs_lock_timeout",
        timeout=False,
    ),
    Case(
        "lock_timeout set to 0 by the revision",
        "SET lock_timeout = 0; ALTER TABLE t ADD COLUMN x int",
        "needs_lock_timeout",
    ),
    Case("SET NOT NULL, no timeout", "ALTER TABLE t ALTER COLUMN g SET NOT NULL", "needs_lock_timeout", timeout=False),
    # -- safe --
    Case(
        "add a nullable column", "ALTER TABLE t ADD COLUMN x int", "safe", source="PostgreSQL docs, ALTER TABLE Notes"
    ),
    Case("add a column with a constant default", "ALTER TABLE t ADD COLUMN x int DEFAULT 0", "safe"),
    Case("add a column with now()", "ALTER TABLE t ADD COLUMN x timestamptz DEFAULT now()", "safe"),
    Case(
        "add a column with CURRENT_TIMESTAMP",
        "ALTER TABLE t ADD COLUMN x timestamptz DEFAULT CURRENT_TIMESTAMP",
        "safe",
    ),
    Case("add NOT NULL with a default", "ALTER TABLE t ADD COLUMN x text NOT NULL DEFAULT 'a'", "safe"),
    Case("add a jsonb column", "ALTER TABLE t ADD COLUMN x jsonb", "safe", source="eugene E3"),
    Case(
        "widen varchar",
        "ALTER TABLE t ALTER COLUMN c TYPE varchar(100)",
        "safe",
        source="PostgreSQL docs, ALTER TABLE Notes",
    ),
    Case("varchar to text", "ALTER TABLE t ALTER COLUMN c TYPE text", "safe"),
    Case("text to varchar", "ALTER TABLE t ALTER COLUMN b TYPE varchar", "safe"),
    Case("widen numeric precision", "ALTER TABLE t ALTER COLUMN d TYPE numeric(12, 2)", "safe"),
    Case("numeric to unconstrained numeric", "ALTER TABLE t ALTER COLUMN d TYPE numeric", "safe"),
    Case("SET DEFAULT", "ALTER TABLE t ALTER COLUMN a SET DEFAULT 5", "safe"),
    Case("DROP DEFAULT of a nullable column", "ALTER TABLE t ALTER COLUMN g DROP DEFAULT", "safe"),
    Case("DROP NOT NULL", "ALTER TABLE t ALTER COLUMN f DROP NOT NULL", "safe"),
    Case("SET STATISTICS", "ALTER TABLE t ALTER COLUMN a SET STATISTICS 500", "safe"),
    Case("SET fillfactor", "ALTER TABLE t SET (fillfactor = 70)", "safe"),
    Case(
        "CHECK NOT VALID",
        "ALTER TABLE t ADD CONSTRAINT a_positive CHECK (a > 0) NOT VALID",
        "safe",
        source="squawk constraint-missing-not-valid",
    ),
    Case(
        "VALIDATE CONSTRAINT",
        "ALTER TABLE t VALIDATE CONSTRAINT a_positive",
        "safe",
        setup="ALTER TABLE t ADD CONSTRAINT a_positive CHECK (a > 0) NOT VALID",
    ),
    Case(
        "FOREIGN KEY NOT VALID",
        "ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES o (id) NOT VALID",
        "safe",
    ),
    Case(
        "SET NOT NULL under a validated check",
        "ALTER TABLE t ALTER COLUMN g SET NOT NULL",
        "safe",
        setup="ALTER TABLE t ADD CONSTRAINT g_nn CHECK (g IS NOT NULL) NOT VALID; "
        "ALTER TABLE t VALIDATE CONSTRAINT g_nn",
    ),
    Case(
        "check NOT VALID, VALIDATE, SET NOT NULL in one step",
        "ALTER TABLE t ADD CONSTRAINT g_nn CHECK (g IS NOT NULL) NOT VALID; ALTER TABLE t VALIDATE CONSTRAINT g_nn; "
        "ALTER TABLE t ALTER COLUMN g SET NOT NULL",
        "safe",
        source="strong_migrations, setting NOT NULL",
    ),
    Case(
        "UNIQUE USING INDEX",
        "ALTER TABLE t ADD CONSTRAINT t_c_unique UNIQUE USING INDEX t_c_idx",
        "safe",
        setup="CREATE UNIQUE INDEX t_c_idx ON t (c)",
        source="squawk disallowed-unique-constraint",
    ),
    Case(
        "CREATE INDEX CONCURRENTLY",
        "CREATE INDEX CONCURRENTLY t_b ON t (b)",
        "safe",
        source="PostgreSQL docs, CREATE INDEX",
    ),
    Case("DROP INDEX CONCURRENTLY", "DROP INDEX CONCURRENTLY t_a", "safe", source="PostgreSQL docs, DROP INDEX"),
    Case("REINDEX CONCURRENTLY", "REINDEX INDEX CONCURRENTLY t_a", "safe", source="PostgreSQL docs, REINDEX"),
    Case("plain VACUUM", "VACUUM t", "safe", source="PostgreSQL docs, VACUUM"),
    Case("CREATE TABLE", "CREATE TABLE fresh (id int PRIMARY KEY, v text)", "safe"),
    Case(
        "index on a table made in the same step",
        "CREATE TABLE fresh (id int, v text); CREATE INDEX fresh_v ON fresh (v)",
        "safe",
    ),
    Case("new table referencing an existing one", "CREATE TABLE child (id int, t_id int REFERENCES t (id))", "safe"),
    Case("COMMENT ON TABLE", "COMMENT ON TABLE t IS 'orders'", "safe", source="PostgreSQL docs, COMMENT"),
    Case("COMMENT ON COLUMN", "COMMENT ON COLUMN t.a IS 'amount'", "safe"),
    Case(
        "COMMENT ON TABLE, no timeout: SHARE UPDATE EXCLUSIVE blocks no traffic",
        "COMMENT ON TABLE t IS 'orders'",
        "safe",
        timeout=False,
    ),
    Case("CREATE TYPE, no timeout: it locks no table", "CREATE TYPE mood AS ENUM ('sad', 'ok')", "safe", timeout=False),
    Case("CREATE VIEW", "CREATE VIEW t_view AS SELECT id, a FROM t", "safe"),
    Case("CREATE SEQUENCE", "CREATE SEQUENCE counter", "safe"),
    Case("UPDATE with WHERE", "UPDATE t SET a = 1 WHERE id = 1", "safe"),
    Case("DELETE with WHERE", "DELETE FROM t WHERE id = 10", "safe"),
    Case("INSERT", "INSERT INTO o VALUES (11)", "safe"),
    Case(
        "lock_timeout set by the revision",
        "SET LOCAL lock_timeout = '1s'; ALTER TABLE t ADD COLUMN x int",
        "safe",
        timeout=False,
        source="eugene E9",
    ),
    Case("RENAME CONSTRAINT", "ALTER TABLE t RENAME CONSTRAINT t_pkey TO t_key", "safe"),
    Case(
        "DROP CONSTRAINT of a foreign key: both tables locked",
        "ALTER TABLE t DROP CONSTRAINT t_a_fk",
        "safe",
        setup="ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES o (id)",
        source="seen tracing MLflow's 6f8d9c3b2a1e",
    ),
    Case(
        "DROP CONSTRAINT of a foreign key, no timeout",
        "ALTER TABLE t DROP CONSTRAINT t_a_fk",
        "needs_lock_timeout",
        setup="ALTER TABLE t ADD CONSTRAINT t_a_fk FOREIGN KEY (a) REFERENCES o (id)",
        timeout=False,
    ),
    Case("drop a table made in the same step", "CREATE TABLE scratch (id int); DROP TABLE scratch", "safe"),
]
