"""The stack floor of a Django no-op: django.setup(), pydantic-settings, structlog, Django's MigrationLoader.

Run in the project's directory with DJANGO_SETTINGS_MODULE set, as bench/suite.py does.
"""

import gc

# The runner's GC settings (runner/process.py, run_program): the same threshold from the start, and
# no collection at exit (disable and freeze), so the floor pays no collector work the runner skips.
gc.set_threshold(50_000, 20, 20)

import os
import sys

import django
import pydantic_settings
import structlog

sys.path.insert(0, os.getcwd())


class Settings(pydantic_settings.BaseSettings):
    model_config = pydantic_settings.SettingsConfigDict(env_prefix="MIGRATION_")
    django_database: str = "default"


settings = Settings()
django.setup()
from django.db import connections
from django.db.migrations.loader import MigrationLoader

loader = MigrationLoader(connections[settings.django_database], ignore_no_migrations=True)
pending = set(loader.graph.leaf_nodes()) - set(loader.applied_migrations)
structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()])
structlog.get_logger().info("upgrade.noop", pending=sorted(pending), applied=len(loader.applied_migrations))
gc.disable()
gc.freeze()
