"""The script API: the generated docs are current, every function declares its contexts, names are pinned."""

from __future__ import annotations

from pathlib import Path

import controller.script as api
from controller._context import REGISTRY
from controller.docs import render

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "script-api.md"


def test_generated_table_in_docs_is_current() -> None:
    assert DOC.read_text() == render(), "run: python -m controller.docs > docs/script-api.md"


def test_every_public_function_says_where_it_is_available() -> None:
    functions = {n for n in api.__all__ if callable(getattr(api, n)) and n not in ("Event", "WrongContextError")}
    assert functions == set(REGISTRY)
    for name in REGISTRY:
        assert "**Available in:**" in (getattr(api, name).__doc__ or "")


def test_exported_names_are_pinned() -> None:
    assert sorted(api.__all__) == sorted([
        "Event", "WrongContextError", "add_button", "add_label", "add_progress", "control_change", "create_background_task", "define_parameter", "fade",
        "get_cc", "get_context", "get_parameter", "get_sample_rate", "get_time", "is_note_held", "kill_all_voices",
        "play_note", "post_event", "print_", "release_voice", "run_async", "run_sync", "set_parameter",
        "set_text", "set_visible", "start_timer", "wait", "wait_for_release",
    ])
