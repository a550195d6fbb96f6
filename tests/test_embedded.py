"""The embedded PostgreSQL: a process killed while using it does not keep it running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: What a run does with no DATABASE_URL: start (or reuse) the server under a data directory.
START = (
    "import sys; from pathlib import Path; from asyncsync.store.embedded import start_embedded; "
    "start_embedded(Path(sys.argv[1]))"
)
KILLED = START + "; import os, signal; os.kill(os.getpid(), signal.SIGKILL)"


def postmaster(pgdata: Path) -> int | None:
    """The server's pid while it runs, else None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def gone(pgdata: Path, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while postmaster(pgdata) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run(code: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, timeout=180
    )


def test_a_run_killed_mid_way_does_not_keep_the_embedded_server_up_for_good(
    tmp_path: Path,
) -> None:
    pgdata = tmp_path / "pgdata"
    killed = run(KILLED, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    server = postmaster(pgdata)
    assert server is not None  # nobody could stop it: the process that used it is gone
    try:
        # The next run reuses it, and being the last one to use it, stops it at exit
        # (pgserver's list of users had kept the dead one, so no exit was ever the last).
        later = run(START, tmp_path)
        assert later.returncode == 0, later.stderr
        assert gone(pgdata, within_s=15), "the embedded server outlived its last user"
    finally:
        if postmaster(pgdata) is not None:
            os.kill(server, signal.SIGINT)  # a fast shutdown, for the next test's sake
            gone(pgdata, within_s=15)


def test_as_root_without_useradd_the_embedded_server_is_a_configuration_sentence(
    tmp_path, monkeypatch
) -> None:
    """As root, pgserver runs PostgreSQL as a system user ``pgserver`` it creates with
    ``useradd`` (in /usr/sbin, off many PATHs: ``env -i PATH=/usr/local/bin:/usr/bin:/bin``,
    cron). The Quickstart then failed, exit 1, with "No such file or directory: 'useradd'"."""
    import pwd

    import pytest

    from asyncsync.errors import ConfigError
    from asyncsync.store import embedded

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))  # no useradd on it
    real = pwd.getpwnam

    def no_pgserver(name: str):
        if name == "pgserver":
            raise KeyError(name)
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", no_pgserver)
    with pytest.raises(ConfigError) as said:
        embedded._embedded_server(tmp_path / "data")
    assert "DATABASE_URL" in str(said.value) and "root" in str(said.value)
