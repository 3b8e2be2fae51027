"""``manage.py migrate`` from an empty database, timed in-process: the seconds of ``call_command("migrate")`` alone.

The anchor of verify's upgrade case, which is timed the same way (in the runner's process, after
its start): Django's own start is outside both. Run in the project's directory with
DJANGO_SETTINGS_MODULE set, as bench/suite.py does; prints ``{"seconds": ...}``.
"""

import json
import os
import sys
import time

import django

sys.path.insert(0, os.getcwd())
django.setup()
from django.core.management import call_command  # noqa: E402

started = time.perf_counter()
call_command("migrate", verbosity=0, interactive=False)
print(json.dumps({"seconds": time.perf_counter() - started}))
