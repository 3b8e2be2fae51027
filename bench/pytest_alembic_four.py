"""pytest-alembic's four built-in tests, run through its public API on MIGRATION_DATABASE_URL.

``pytest --test-alembic`` runs ``test_single_head_revision``, ``test_upgrade``,
``test_model_definitions_match_ddl`` and ``test_up_down_consistency``; each takes the
``alembic_runner`` that ``pytest_alembic.runner()`` yields. This script calls the same
functions, in that order, on one database (the setup of pytest-alembic's documentation: an
``alembic_engine`` fixture on the CI's database), without pytest's collection:
pytest-alembic 0.13 does not collect under pytest 9. Run it in the project's directory
(``alembic.ini``). Prints one JSON object, ``{"test_upgrade": "passed", ...}`` (a failure's
first line otherwise), and exits 1 when a test failed.
"""

import json
import os
import sys

import pytest_alembic
import sqlalchemy
from pytest_alembic.config import Config
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)

engine = sqlalchemy.create_engine(os.environ["MIGRATION_DATABASE_URL"])
outcomes = {}
for test in (test_single_head_revision, test_upgrade, test_model_definitions_match_ddl, test_up_down_consistency):
    with pytest_alembic.runner(config=Config(), engine=engine) as runner:
        try:
            test(runner)
        except Exception as error:
            outcomes[test.__name__] = f"failed: {str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
        else:
            outcomes[test.__name__] = "passed"
engine.dispose()
print(json.dumps(outcomes))
sys.exit(0 if all(outcome == "passed" for outcome in outcomes.values()) else 1)
