"""HISE's BackgroundTask download example, without the internet.

A background task runs a local program (examples/fake_download.py, printing
curl-like progress lines) through run_process; the log function parses each
line into progress and a status message; the "run" parameter's control
callback starts it, and setting it to false cancels it gracefully; the finish
callback reports (is_finished, was_cancelled).

    ensemble load examples/instruments/download.py
    ensemble param set run true ; ensemble status ; ensemble param set run false
"""

import sys
from pathlib import Path

from controller.script import create_background_task, define_parameter, print_, set_parameter

FAKE_DOWNLOAD = str(Path(__file__).resolve().parent.parent / "fake_download.py")

# Create a background task and give it a name that's descriptive
task = create_background_task("DownloadTest")
# The fake download prints a line every 50 ms, so 2 s is ample for a graceful cancel.
task.set_timeout(2000)
# Forward the status and progress to the loading-status channel (ensemble status).
task.set_forward_status_to_loading_thread(True)


def on_finish(is_finished, was_cancelled):
    print_(f"Finished: {is_finished}")
    print_(f"Cancelled: {was_cancelled}")
    set_parameter("last_finish", f"{is_finished},{was_cancelled}")


task.set_finish_callback(on_finish)


def download_logger(thread, is_finished, data):
    """Runs in the worker for every line the program prints, and once with its exit code."""
    if is_finished:
        thread.set_status_message(f"exit code {data}")
        return
    v = data.split()
    progress = int(v[0]) / 100.0
    message = f"Downloading {v[3]}B of {v[1]}B"
    if progress < 0.01:
        message = "Start Downloading..."
    thread.set_progress(progress)
    thread.set_status_message(message)


def on_button(value):
    if value:
        task.run_process(sys.executable, [FAKE_DOWNLOAD, "--seconds", "30"], download_logger)
    else:
        # This should gracefully cancel the download
        task.send_abort_signal(False)


define_parameter("run", "Run", False, on_change=on_button)
define_parameter("last_finish", "Last finish (finished,cancelled)", "")
