"""``python -m runner`` is ``migration-runner``."""

from runner.cli import main

raise SystemExit(main())
