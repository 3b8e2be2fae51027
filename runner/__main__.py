"""``python -m runner`` is ``migration-runner``."""

from runner.cli import entrypoint

entrypoint()
