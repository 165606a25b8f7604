"""The embedded ClickHouse's local server (stream/clickhouse/local_server.py): one per directory.

Real chdb behind it, real processes: racing clients, a second server, a SIGKILLed one, idleness.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from stream.clickhouse import connect
from stream.clickhouse import local_server as ls
from stream.config import load_settings
from tests.support.waits import wait

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "chdb"
    try:
        yield path
    finally:
        ls.stop(path)


_wait = partial(wait, every_s=0.05)

_RACER = """
import sys, time
from pathlib import Path
from stream.clickhouse.local_server import ensure
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
ep, lease = ensure(Path(sys.argv[1]), idle_s=60)
print(ep.pid, ep.port, flush=True)
lease.close()
"""


def test_clients_racing_to_start_the_server_of_a_directory_end_with_one_server(chdb_dir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(chdb_dir), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for r in racers:  # every racer has imported and polls for the go file: start them at once
        assert r.stdout is not None and r.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [r.communicate(timeout=120) for r in racers]
    assert [r.returncode for r in racers] == [0] * 4, [err for _, err in outputs]
    got = {out.strip() for out, _ in outputs}
    assert len(got) == 1  # every client got the same server
    pid = int(got.pop().split()[0])
    assert ls.server_pids(chdb_dir) == [pid]  # and no other server runs for the directory


def test_a_second_server_for_a_directory_exits_with_status_3_and_the_first_keeps_serving(chdb_dir: Path) -> None:
    ep, lease = ls.ensure(chdb_dir, idle_s=60)
    try:
        second = subprocess.run(
            [sys.executable, "-m", ls.MODULE, "--path", str(chdb_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == ls.EXIT_BUSY
        assert f"a ClickHouse server already serves {chdb_dir.resolve()} (pid {ep.pid}" in second.stderr
        assert ls.reachable(chdb_dir) == ep
    finally:
        lease.close()
    # `python -m stream clickhouse stop` ends it
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "clickhouse", "stop"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "STREAM_CHDB_PATH": str(chdb_dir)},
    )
    assert proc.returncode == 0 and f"(pid {ep.pid})" in proc.stdout
    assert ls.server_pids(chdb_dir) == [] and ls.read_endpoint(chdb_dir) is None


def test_a_killed_server_is_replaced_by_the_next_client_and_the_data_stays(chdb_dir: Path, unique: str) -> None:
    settings = load_settings(chdb_path=chdb_dir, clickhouse_database=f"t_{unique}")
    ch = connect(settings)
    ch.command(
        "INSERT INTO {db}.events (event_id, event_type, user_id, session_id, event_time) "
        "VALUES ('e1', 'page_view', 'u1', 's1', now64(3))"
    )
    first = ls.read_endpoint(chdb_dir)
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    _wait(lambda: ls.server_pids(chdb_dir) == [], 10, "the killed server gone")
    with pytest.raises(Exception, match="ClickHouse query failed"):
        ch.query_df("SELECT 1")  # the old connection has nobody to talk to
    ch.close()

    ch = connect(settings)
    try:
        second = ls.read_endpoint(chdb_dir)
        assert second is not None and second.pid != first.pid
        assert ch.query_df("SELECT count() AS n FROM {db}.events")["n"].iloc[0] == 1
    finally:
        ch.close()


def test_the_server_stays_while_a_client_holds_a_lease_and_exits_once_idle(chdb_dir: Path, tmp_path: Path) -> None:
    ep, lease = ls.ensure(chdb_dir, idle_s=1)
    # A control server started after it, with no lease, leaving for idleness: by then the leased
    # server has been idle at least as long, and must not have left.
    control = tmp_path / "control"
    try:
        _, control_lease = ls.ensure(control, idle_s=1)
        control_lease.close()
        _wait(lambda: ls.server_pids(control) == [], 15, "the control server gone for idleness")
    finally:
        ls.stop(control)
    assert ls.reachable(chdb_dir) == ep
    lease.close()
    _wait(lambda: ls.server_pids(chdb_dir) == [], 15, "the idle server gone")
    assert "no client for 1 s: exiting" in (chdb_dir / ls.LOG_FILE).read_text()
    assert ls.read_endpoint(chdb_dir) is None


def test_the_server_refuses_a_wrong_password_and_never_logs_it(chdb_dir: Path) -> None:
    ep, lease = ls.ensure(chdb_dir, idle_s=60)
    try:
        assert oct((chdb_dir / ls.STATE_FILE).stat().st_mode & 0o777) == "0o600"

        def select_one(password: str) -> int:
            req = urllib.request.Request(
                f"{ep.url}/?query=SELECT%201",
                headers={"Authorization": "Basic " + base64.b64encode(f"default:{password}".encode()).decode()},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                assert exc.headers["X-ClickHouse-Exception-Code"] == "516"
                return int(exc.code)

        assert select_one("wrong") == 401
        assert select_one(ep.password) == 200
    finally:
        lease.close()
    assert ep.password not in (chdb_dir / ls.LOG_FILE).read_text()


def test_an_insert_select_from_input_and_settings_a_set_statement_changes(chdb_dir: Path) -> None:
    """INSERT ... SELECT ... FROM input('<structure>') FORMAT f reads the body as a server does; a setting
    given with a request holds for it even after a SET statement changed the session's value."""
    ep, lease = ls.ensure(chdb_dir, idle_s=60)
    auth = {"Authorization": "Basic " + base64.b64encode(f"default:{ep.password}".encode()).decode()}

    def run(query: str, body: bytes = b"", **params: str) -> str:
        url = f"{ep.url}/?" + urllib.parse.urlencode({"query": query, **params})
        req = urllib.request.Request(url, data=body or None, headers=auth)
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.read().decode().strip()

    try:
        run("CREATE TABLE default.doubled (n UInt32, s String) ENGINE = Memory")
        run(
            "INSERT INTO default.doubled SELECT a * 2, upper(b) FROM input('a UInt16, b String') FORMAT CSV",
            b'1,"x"\n300,"y, z"\n',
        )
        assert run("SELECT n, s FROM default.doubled ORDER BY n") == "2\tX\n600\tY, Z"

        query = "SELECT getSetting('max_block_size')"
        assert run(query, max_block_size="1234") == "1234"
        run("SET max_block_size = 999")
        assert run(query, max_block_size="1234") == "1234"
        assert run(query) == "1234"  # a value set stays, as it did before
    finally:
        lease.close()


def test_bound_parameters_too_long_for_the_url_come_as_form_fields_and_are_bound(chdb_dir: Path) -> None:
    """clickhouse-connect sends the query and its parameters as multipart/form-data once they would make
    the URL too long (the shadow compare's ``session_id IN`` over thousands of sessions did): the
    server binds them as it does URL parameters, instead of failing on a truncated query."""
    settings = load_settings(chdb_path=str(chdb_dir), clickhouse_database="form")
    ch = connect(settings)
    try:
        ch.command("CREATE TABLE {db}.ids (id String) ENGINE = Memory")
        ch.command(
            "INSERT INTO {db}.ids SELECT concat('session-', leftPad(toString(number), 6, '0'), '-', "
            "repeat('x', 30)) FROM numbers(5000)"
        )
        ids = [f"session-{i:06d}-{'x' * 30}" for i in range(5000)]  # about 230 KB of parameter
        wanted = [*ids[::7], "not-there"]
        df = ch.query_df("SELECT id FROM {db}.ids WHERE id IN {s:Array(String)} ORDER BY id", params={"s": wanted})
        assert df["id"].tolist() == sorted(ids[::7])
    finally:
        ch.close()
