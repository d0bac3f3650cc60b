"""A real, throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a data
folder in a temporary directory, a free port on 127.0.0.1, trust authentication.

    async with postgres_server(tmp_path) as pg:
        pg.url     # postgresql://postgres@127.0.0.1:PORT/postgres

`initdb` and `postgres` refuse to run as root: as root they run as the `postgres` user (the
package creates it) on a folder that user owns. Starting one takes a couple of seconds.
Stopped with `pg_ctl -m immediate` afterwards; the folder goes with the tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.harness import free_port

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    """The newest installed server's bin folder, or None when PostgreSQL is not installed."""
    if not PG_ROOT.is_dir():
        return None
    versions = sorted((p for p in PG_ROOT.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


@dataclass
class PostgresServer:
    data: Path
    port: int
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    async def create_database(self, name: str) -> str:
        await _run(self, [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "-q", "-c", f'CREATE DATABASE "{name}"'])
        return self.database_url(name)

    async def stop(self) -> None:
        await _run(self, [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop"], check=False)

    async def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off "
                   "-c max_connections=200")
        await _run(self, [str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                          "-l", str(self.data / "server.log"), "-o", options, "start"])


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


async def _run(pg: PostgresServer, command: list[str], check: bool = True) -> None:
    result = await trio.run_process(_as_postgres(command), capture_stdout=True,
                                    capture_stderr=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): "
                           f"{result.stderr.decode(errors='replace')}")


@asynccontextmanager
async def postgres_server(tmp_path: Path) -> AsyncIterator[PostgresServer]:
    """A running server on a fresh data folder; stopped (immediately) at the end."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (tests/install-tools.sh installs it)")
    base = tmp_path / "pg"
    base.mkdir()
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        os.chmod(tmp_path, 0o755)  # so that the postgres user can reach its folder
        for parent in tmp_path.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
    pg = PostgresServer(data, free_port(), bin_dir)
    await _run(pg, [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync", "-E", "UTF8"])
    await pg.start()
    try:
        yield pg
    finally:
        with trio.CancelScope(shield=True):
            await pg.stop()

