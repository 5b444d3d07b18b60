"""``ensemble midi list`` and ``midi connect`` as a user reads them: one line per reason, no C library noise.

Against real CLI processes (and a private JACK server for the JACK port);
each test fails on the code before its fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from audio import BackendUnavailable
from audio._jack import jack_module
from audio._midi_ports import alsa_sequencer_reason, rtmidi_module
from tests.audio.test_jack_backend import _start_private_server, _stop
from tests.conftest import Daemon, wait_for

NO_SEQUENCER = ("the ALSA sequencer is unavailable: no /dev/snd/seq, the snd-seq kernel module is not loaded "
                "(`sudo modprobe snd-seq` loads it)")


def _need_rtmidi() -> None:
    try:
        rtmidi_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def private_jack(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A JACK server of this test's own (its name), made this process's default server meanwhile."""
    try:
        jack_module()
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (Debian: jackd2)")
    name = f"ens-polish-{os.getpid()}"
    server = _start_private_server(name)
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    try:
        yield name
    finally:
        _stop(server)


@pytest.mark.jack
def test_midi_list_without_a_sequencer_says_why_in_one_line_and_lists_jack_ports(
        make_daemon: Callable[..., Daemon], private_jack: str) -> None:
    reason = alsa_sequencer_reason()
    if not reason:
        pytest.skip("this machine has /dev/snd/seq: the ALSA sequencer is there to list")
    _need_rtmidi()
    if shutil.which("jack_midiseq") is None:
        pytest.skip("jack_midiseq is not installed (Debian: jackd2)")
    # the MIDI source is a process of its own: a JACK client in this process, on a second server, crashed it
    # (a segfault as the private server stopped, after an earlier test had used the default one from here)
    d = make_daemon()  # never started: the list is looked up from the CLI's own process
    d.env["JACK_DEFAULT_SERVER"] = private_jack
    source = subprocess.Popen(["jack_midiseq", "ens-polish-src", "48000", "0", "60", "8000"], env=d.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port = "ens-polish-src:out"
    try:
        out = wait_for(lambda: (o := d.cli("midi", "list")) and f"  jack\t{port}" in o.stdout.splitlines() and o,
                       30, what="the source's port to be listed")
    finally:
        source.terminate()
        source.wait(10)
    assert "ALSA lib" not in out.stderr and out.stderr == "", out.stderr  # was: libasound's raw lines on stderr
    lines = out.stdout.splitlines()
    assert f"  jack\t{port}" in lines, lines  # the JACK ports are still listed
    assert f"  {NO_SEQUENCER}" in lines, lines  # was: "(ALSA sequencer: RtMidi cannot open the alsa MIDI API (...))"
    assert sum("sequencer" in line for line in lines) == 1, lines
    assert "no MIDI sources found" not in out.stdout


ALSA_OPEN = """
import rtmidi
from audio._midi_ports import _alsa_quiet
{quiet}
    try:
        rtmidi.MidiIn(rtmidi.API_LINUX_ALSA, name="ens-quiet")
    except Exception:
        pass
"""


def test_libasound_s_own_error_lines_are_kept_off_stderr_while_the_sequencer_is_opened() -> None:
    """Where /dev/snd/seq exists but cannot be opened (permissions), RtMidi is asked, and libasound would print."""
    _need_rtmidi()

    def stderr_of(quiet: str) -> str:
        code = ALSA_OPEN.format(quiet=quiet)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr

    loud = stderr_of("if True:")
    if "ALSA lib" not in loud:
        pytest.skip("libasound prints nothing here: the ALSA sequencer opens")
    assert stderr_of("with _alsa_quiet():") == ""


@pytest.mark.slow  # several CLI processes on JACK: ~3.5 s
def test_midi_connect_of_an_unknown_port_fails_with_the_reason_every_time(daemon: Daemon) -> None:
    """Each attempt gets its own outcome: the same reason as an earlier attempt's is no reason to wait it out."""
    for attempt in range(7):  # past the processor's five recent errors, all the same line
        proc = daemon.cli("midi", "connect", "ens-no-such:port", check=False)
        assert proc.returncode == 1 and proc.stdout == "", (attempt, proc.stdout)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, (attempt, proc.stderr)
        # was, from the second attempt on: "the processor did not report 'ens-no-such:port' connected within 10s"
        assert lines[0].startswith("ensemble: error: midi connect 'ens-no-such:port': "), (attempt, lines[0])
        assert "`ensemble midi list`" in lines[0], (attempt, lines[0])  # was: no word on how to see the ports
    stats = daemon.actor("processor").stats
    assert stats["midi_connects"] == 7 and not stats.get("midi_timed_inputs")
