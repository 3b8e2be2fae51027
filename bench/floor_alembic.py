"""The stack floor of an Alembic no-op: what any runner on this stack pays when the database is at head.

Imports psycopg, pydantic-settings and structlog, reads MIGRATION_DATABASE_URL,
connects, reads the version table and logs one JSON line. Usage (as bench/suite.py runs it)::

    MIGRATION_DATABASE_URL=postgresql://... python bench/floor_alembic.py
"""

import gc

# The runner's GC settings (runner/process.py, run_program): the same threshold from the start, and
# no collection at exit (disable and freeze), so the floor pays no collector work the runner skips.
gc.set_threshold(50_000, 20, 20)

import os

import psycopg
import pydantic_settings
import structlog


class Settings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="MIGRATION_")
    database_url: str


settings = Settings()
conninfo = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(conninfo, autocommit=True) as connection:
    versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()])
structlog.get_logger().info("upgrade.noop", current=versions, pid=os.getpid())
gc.disable()
gc.freeze()
