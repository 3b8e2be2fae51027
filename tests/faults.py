"""Real faults for the tests: a throwaway PostgreSQL cluster, a TCP proxy that resets, a PgBouncer.

The cluster uses the Debian binaries (``/usr/lib/postgresql/<version>/bin``).
initdb refuses to run as root, so as root every server command runs as the
``postgres`` OS user through ``runuser``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_bin() -> Path:
    """The directory of the newest installed PostgreSQL server binaries."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    return versions[-1].parent


def _as_server_user(command: list[str], user: str) -> list[str]:
    return ["runuser", "-u", user, "--", *command] if os.geteuid() == 0 else command


class ThrowawayPostgres:
    """A PostgreSQL cluster in a new directory under /tmp on a free port, to stop, start and restart at will.

    Not under pytest's tmp_path: that is private to root, and the server runs as ``postgres``.
    """

    def __init__(self, *, standby_of: ThrowawayPostgres | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mr-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.bin = postgres_bin()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        if standby_of is None:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        else:  # a hot standby streaming from the primary: -R writes standby.signal and primary_conninfo
            self._run(
                "pg_basebackup", "-h", "127.0.0.1", "-p", str(standby_of.port), "-U", "postgres",
                "-D", str(self.data), "-R", "--no-sync",
            )  # fmt: skip

    @property
    def url(self) -> str:
        """A ``postgresql://`` URL of its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        command = _as_server_user([str(self.bin / program), *args], "postgres")
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{program} exited {done.returncode}: {done.stderr or done.stdout}")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            "30",
            "-o",
            options,
            *extra,
            action,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def crash(self) -> None:
        """``pg_ctl stop -m immediate``: no shutdown checkpoint, WAL still in shared memory is lost; then start."""
        self._pg_ctl("stop", "-m", "immediate")
        self.start()

    def stop(self) -> None:
        """Stop the server if it runs, and remove its directory."""
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


class ResettingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target_port`` and can reset every connection.

    ``reset_all()`` closes both ends of each proxied connection with an RST
    (SO_LINGER 0), as a network fault does; new connections go on working.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, upstream_writer}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer))
        self._writers -= {client_writer, upstream_writer}

    def reset_all(self) -> int:
        """Reset every open connection; return how many sockets were reset."""

        def reset() -> int:
            count = 0
            for writer in list(self._writers):
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                count += 1
            self._writers.clear()
            return count

        return asyncio.run_coroutine_threadsafe(_call(reset), self._loop).result(5)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _call(function: Callable[[], int]) -> int:
    return function()  # run on the proxy's event loop, which owns the sockets


class PgBouncer:
    """A PgBouncer in transaction pooling mode in front of a PostgreSQL server (Debian's ``pgbouncer``)."""

    def __init__(self, server_port: int, database: str) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer is not installed (apt-get install pgbouncer)")
        directory = self.directory = Path(tempfile.mkdtemp(prefix="mr-bouncer-"))
        self.port = free_port()
        (directory / "users.txt").write_text('"postgres" ""\n')
        (directory / "pgbouncer.ini").write_text(
            f"[databases]\n{database} = host=127.0.0.1 port={server_port} dbname={database}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\nauth_type = trust\n"
            f"auth_file = {directory}/users.txt\npool_mode = transaction\ndefault_pool_size = 4\n"
            # Round robin: each transaction may get another server session, as under steady application
            # traffic; the default (the last used one first) can hand an idle pooler's one session back.
            "server_round_robin = 1\n"
            f"unix_socket_dir =\nlogfile = {directory}/pgbouncer.log\n"
            "ignore_startup_parameters = extra_float_digits,options,application_name\n"
        )
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
            for child in directory.iterdir():
                shutil.chown(child, "postgres", "postgres")
        self.process = subprocess.Popen(_as_server_user([binary, str(directory / "pgbouncer.ini")], "postgres"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError("pgbouncer did not start listening")

    def stop(self) -> None:
        """Stop PgBouncer and remove its directory."""
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)
