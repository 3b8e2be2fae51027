"""``verify``: the CI checks on a scratch database; the engine of the checks is :mod:`runner.verify`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner import catalog, database, logs
from runner.commands import stairway
from runner.commands.migrate import _migration_lock
from runner.commands.run import Run, known_revisions, require_known_revisions
from runner.drivers import Driver
from runner.errors import (
    ConfigError,
    ExitCode,
)
from runner.logs import get_logger

# How many of the objects that make a database no scratch database the refusal names.
GUARD_SHOWS = 10


def verify(run: Run) -> ExitCode:
    """The CI checks on a scratch database (:mod:`runner.verify`): one head, upgrade, models, the stairway, no trace.

    Prints the report on stdout (text, ``--output json`` or ``markdown``) and, with
    ``--junit-xml PATH``, writes it as JUnit XML.

    Returns:
        ``ExitCode.OK`` when no case failed (skipped ones do not fail), ``ExitCode.NOT_AT_TARGET`` (1) otherwise.

    Raises:
        ConfigError: the database holds anything already, in any schema the connection sees
            (:func:`runner.catalog.application_objects`), unless ``--allow-nonempty``, which the
            ``production`` environment refuses.
        DatabaseUnavailable, LockTimeout.
    """
    from runner import verify as checks  # noqa: PLC0415

    settings = run.settings
    if settings.environment == "production" and settings.verify_allow_nonempty:
        raise ConfigError(
            "verify --allow-nonempty is refused in the production environment: verify reverts every revision, "
            "and a database with tables in production holds data; run it on a scratch database with "
            "MIGRATION_ENVIRONMENT=test; nothing was changed"
        )
    project = run.project()
    known = known_revisions(project)
    _check_verify_settings(known, settings.verify_heads, settings.verify_irreversible, settings.noop_downgrades)
    if settings.verify_released is not None:
        try:  # a typo is 78 before anything runs, not a case skipped at the end
            project.target_revisions(settings.verify_released)
        except ConfigError as error:
            raise ConfigError(f"MIGRATION_VERIFY_RELEASED: {error}") from error
    data = _read_data_dir(known, settings.verify_data_dir)
    url = run.migration_url()
    engine = run.engine(url)
    ignored = (run.version_table.name, settings.history_table)
    cases: list[checks.Case] = []
    rebuilds: list[checks.Rebuild] = []
    with run.connect(engine) as connection, database.losing_connection_raises():
        found = catalog.application_objects(connection, ignored, limit=GUARD_SHOWS + 1)
        if found and not settings.verify_allow_nonempty:
            shown = ", ".join(found[:GUARD_SHOWS]) + (", and more" if len(found) > GUARD_SHOWS else "")
            raise ConfigError(
                f"verify needs a scratch database, and this one holds {shown}; point MIGRATION_DATABASE_URL at "
                "an empty database (a CI service container), or pass --allow-nonempty; nothing was changed"
            )
        cases.append(_single_head(project, settings.verify_heads))
        with _migration_lock(run, connection) as held:
            if cases[0].status == "passed" or settings.verify_heads is not None:
                steps, rebuilds = stairway.verify_steps(run, project, connection, held, url, data=data)
                cases += steps
            else:
                for check in CHECKS_AFTER_HEADS:
                    cases.append(checks.Case(check, check))
                    cases[-1].skip("several heads: merge them first")
    code = ExitCode.NOT_AT_TARGET if any(case.status == "failed" for case in cases) else ExitCode.OK
    # Redacted like the logs: a revision's own error, in a case's message, may carry the URL.
    report = logs.redact_value(
        checks.document(
            tool=project.tool,
            database=run.target.light_url.database_name,
            cases=cases,
            exit_code=code,
            rebuilds=rebuilds,
        )
    )
    if settings.junit_xml is not None:
        settings.junit_xml.write_bytes(checks.junit(report))
    if settings.output == "json":
        run.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        run.stdout.write(checks.markdown(report) if settings.output == "markdown" else checks.text(report))
    run.stdout.flush()
    get_logger().info("verify.finished", passed=report["passed"], failed=report["failed"], skipped=report["skipped"])
    return code


def _check_verify_settings(
    known: set[str], heads: Sequence[str] | None, irreversible: Sequence[str], noop: Sequence[str] = ()
) -> None:
    """The revisions these settings name exist (a typo is 78).

    ``MIGRATION_VERIFY_HEADS``, ``MIGRATION_VERIFY_IRREVERSIBLE`` and ``MIGRATION_NOOP_DOWNGRADES``.

    Raises:
        ConfigError: an empty heads list, or a name that is no revision of the project.
    """
    if heads is not None and not heads:
        raise ConfigError("MIGRATION_VERIFY_HEADS is empty: list the heads you mean to have, or unset it")
    require_known_revisions(
        known,
        [
            ("MIGRATION_VERIFY_HEADS", heads or ()),
            ("MIGRATION_VERIFY_IRREVERSIBLE", irreversible),
            ("MIGRATION_NOOP_DOWNGRADES", noop),
        ],
    )


def _read_data_dir(known: set[str], directory: Path | None) -> dict[str, Path]:
    """``MIGRATION_VERIFY_DATA_DIR``'s files by revision id (:func:`runner.seed_data.read_directory`); 78 if bad."""
    if directory is None:
        return {}
    from runner import seed_data  # noqa: PLC0415  (only with the setting)

    return seed_data.read_directory(directory, known)


CHECKS_AFTER_HEADS = (
    "upgrade",
    "models_match",
    "backward_compatible",
    "up_down_consistency",
    "downgrade_leaves_no_trace",
)


def _single_head(project: Driver, expected: Sequence[str] | None) -> Any:
    from runner import verify as checks  # noqa: PLC0415

    case = checks.Case("single_head", "single_head")
    with checks.Timer(case):
        heads = sorted(project.heads())
        diverged = project.diverged()
        if expected is not None and sorted(expected) != heads:
            case.fail(f"the heads are {', '.join(heads)}, not MIGRATION_VERIFY_HEADS={','.join(expected)}", heads)
        elif expected is None and diverged:
            case.fail(
                f"{len(diverged)} heads: {', '.join(diverged)}; run `{project.merge_command}` to join them "
                "(or list the heads you mean to have in MIGRATION_VERIFY_HEADS)",
                diverged,
            )
    return case
