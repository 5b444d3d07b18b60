"""HISE's BackgroundTask download example with its button, on the instrument panel (no internet needed).

As in the seed: one button starts the download and a second click cancels it
gracefully; a progress bar follows the task; the finish callback shows and
hides elements.  The "download" is examples/fake_download.py printing
curl-like progress lines; the log function turns each line into progress and
a status message, forwarded to the panel's loading bar (HISE's top bar).

    ensemble up --panel
    ensemble load examples/instruments/download_panel.py
    # click "Run" on the panel; click again ("Cancel") to stop it
"""

import sys
from pathlib import Path

from controller.script import (
    add_button, add_label, add_progress, create_background_task, define_parameter, get_parameter, print_,
    set_parameter, set_text, set_visible,
)

FAKE_DOWNLOAD = str(Path(__file__).resolve().parent.parent / "fake_download.py")

# Create a background task and give it a name that's descriptive
task = create_background_task("DownloadTest")
# The fake download prints a line every 50 ms, so 2 s is ample for a graceful cancel.
task.set_timeout(2000)
# Forward the status and progress to the loading bar (the panel's header, `ensemble status`).
task.set_forward_status_to_loading_thread(True)

define_parameter("seconds", "Download length (s)", 30.0, 0.5, 600.0)
define_parameter("last_finish", "Last finish (finished,cancelled)", "")


def on_finish(is_finished, was_cancelled):
    """Called when the task starts (False, False) and when it stops: show and hide elements."""
    print_(f"Finished: {is_finished}")
    print_(f"Cancelled: {was_cancelled}")
    set_visible("bar", not is_finished)
    set_text("run", "Run" if is_finished else "Cancel")
    if is_finished:
        set_text("result", "Cancelled." if was_cancelled else "Download complete.")
    set_visible("result", is_finished)
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


def on_button():
    """This button just starts and cancels the download."""
    if not task.running:
        seconds = str(get_parameter("seconds"))
        task.run_process(sys.executable, [FAKE_DOWNLOAD, "--seconds", seconds], download_logger)
    else:
        # This should gracefully cancel the download
        task.send_abort_signal(False)


add_button("run", "Run", on_button)
add_progress("bar", "download", task=task)
set_visible("bar", False)
add_label("result", "")
set_visible("result", False)
