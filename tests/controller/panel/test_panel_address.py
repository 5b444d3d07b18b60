"""Where the panel cannot listen: refused up front, or said with its cause and fix, and not restarted for nothing.

Against a real daemon; the address checks themselves are pure functions
(``controller.panel._settings``) tested without one at the end.
"""

from __future__ import annotations

import errno
import re
import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest

from actors import DaemonError
from controller.messages import PanelStart
from controller.panel._settings import bind_refusal, host_refusal, parse_address
from tests.conftest import Daemon, wait_for

NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): an address no host has


@pytest.fixture
def busy_port() -> Iterator[socket.socket]:
    """A loopback port another program listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def _log(d: Daemon) -> str:
    return (d.base / "state" / "daemon.log").read_text()


def _url(d: Daemon, *args: str) -> str:
    out = d.cli("panel", *args).stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=\S{40,}", out), out
    return out


@pytest.mark.slow  # two panels' binds: ~1.7 s
def test_a_busy_port_is_said_with_its_fix_and_not_retried_until_asked_again(
        make_daemon: Callable[..., Daemon], busy_port: socket.socket) -> None:
    d = make_daemon()
    d.up()
    port = busy_port.getsockname()[1]
    out = d.cli("panel", "--port", str(port), check=False)
    assert out.returncode == 1
    assert f"the panel could not start: port {port} is in use" in out.stderr, out.stderr
    assert "`ensemble panel --host ADDRESS --port N`, or `ensemble up --panel ADDRESS:PORT`" in out.stderr
    assert "gave up" not in out.stderr
    panel = d.actor("panel")
    assert panel.state == "running" and panel.restarts == 0 and "in use" in panel.stats["bind_error"]
    assert d.status().daemon.counters["panel"].startswith(f"not serving: port {port} is in use")
    assert _log(d).count("event=panel-bind-failed") == 1 and "event=exit name=panel" not in _log(d)
    busy_port.close()  # the port is free now: the same request serves it, in the same process
    url = _url(d, "--port", str(port))
    assert f":{port}/" in url
    after = d.actor("panel")
    assert after.pid == panel.pid and after.restarts == 0 and after.stats["bind_error"] == ""
    assert d.status().daemon.counters["panel"] == url.split("?")[0]


@pytest.mark.slow  # two panels' binds: ~1.6 s
def test_an_address_this_host_does_not_have_is_said_and_another_one_serves(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.up()
    out = d.cli("panel", "--host", NOT_HERE, "--port", "0", check=False)
    assert out.returncode == 1
    assert f"the panel could not start: cannot bind {NOT_HERE}: Cannot assign requested address" in out.stderr, \
        out.stderr
    assert "--host" in out.stderr and "gave up" not in out.stderr
    first = d.actor("panel")
    url = _url(d, "--port", "0")  # 127.0.0.1 (the default): the panel that could not bind serves it
    panel = d.actor("panel")
    assert panel.pid == first.pid and panel.restarts == 0 and panel.detail == ""
    assert panel.stats["port"] == int(url.split(":")[2].split("/")[0])
    assert "event=exit name=panel" not in _log(d)


def test_a_host_that_is_no_address_is_refused_before_any_panel_starts(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.up()
    c = d.client()
    for host in ("999.999.1.1", "10.0.0", "bad host", "-x.example", ""):
        with pytest.raises(DaemonError, match="is not an IP"):
            c._call(PanelStart(0, host))
    out = d.cli("panel", "--host", "999.999.1.1", check=False)
    assert out.returncode == 1 and "panel host '999.999.1.1' is not an IPv4 address" in out.stderr, out.stderr
    assert not any(a.role == "panel" for a in d.status().actors)
    assert not (d.base / "run" / "panel.json").exists()


def test_up_with_a_panel_host_that_is_no_address_fails_before_the_daemon_starts(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    out = d.cli("up", "--panel", "999.999.1.1:0", check=False)
    assert out.returncode == 1 and "is not an IPv4 address" in out.stderr, out.stderr
    assert not (d.base / "run" / "daemon.pid").exists()


@pytest.mark.slow  # waits for the panel to give up restarting (~5 s): run by .ci/run's slow pass
def test_a_start_after_the_panel_gave_up_shows_no_give_up(make_daemon: Callable[..., Daemon],
                                                          tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    crash.touch()
    d = make_daemon(extra_env={"ENSEMBLE_TEST_CRASH_ROLE": f"panel:{crash}"})  # the panel exits 3 at start
    d.up()
    out = d.cli("panel", "--port", "0", check=False)
    assert out.returncode == 1 and "gave up" in out.stderr, out.stderr
    crash.unlink()
    _url(d)
    panel = wait_for(lambda: (a := d.actor("panel")).state == "running" and a, what="the panel to run")
    assert panel.detail == "", panel.detail


# ---------------------------------------------------------------- the checks, without a daemon
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost", "panel.example.org",
                                  "my-host", "fe80::1%lo"])
def test_hosts_the_panel_may_try(host: str) -> None:
    assert host_refusal(host) == ""


@pytest.mark.parametrize("host", ["999.999.1.1", "1.2.3.4.5", "256.0.0.1", "", "a b", "x_y", "-a.b", "a..b",
                                  "x" * 64, "[::1]"])
def test_hosts_refused(host: str) -> None:
    assert "is not an IP" in host_refusal(host) and "127.0.0.1" in host_refusal(host)


def test_bind_errors_say_the_cause_and_the_fix() -> None:
    in_use = bind_refusal("127.0.0.1", 8765, OSError(errno.EADDRINUSE, "error while attempting to bind"))
    assert in_use.startswith("port 8765 is in use") and "--port" in in_use
    absent = bind_refusal("10.255.255.1", 8765, OSError(errno.EADDRNOTAVAIL, "x"))
    assert absent.startswith("cannot bind 10.255.255.1: Cannot assign requested address") and "--host" in absent
    assert "below 1024" in bind_refusal("0.0.0.0", 80, OSError(errno.EACCES, "x"))
    unknown = bind_refusal("nowhere.invalid", 8765, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert "does not resolve (Name or service not known)" in unknown
    # each names both places an address is given: `up` has no --host (it said "with --host" to `up --panel` too)
    assert all("`ensemble up --panel ADDRESS:PORT`" in text for text in (in_use, absent, unknown))


def test_panel_addresses_parse_and_refuse_what_no_host_has() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError, match="not an IPv4 address"):
        parse_address("999.999.1.1:80")
    with pytest.raises(ValueError, match="0..65535"):
        parse_address("127.0.0.1:70000")
