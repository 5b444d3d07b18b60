"""Wrong-context calls in both directions, and get_context()."""

from controller.script import *  # noqa: F403


def noop():
    pass


def where():
    return get_context()


async def on_note(event):
    if event.note == 1:
        run_sync(noop)  # controller-only, called in the processor
    elif event.note == 2:
        set_parameter("ctx_seen", get_context())
    elif event.note == 3:
        set_parameter("ctx_controller", await run_async(where))
    elif event.note == 4:
        try:
            await run_async(boom)
        except Exception as exc:  # the controller's exception, raised at the await
            set_parameter("async_error", str(exc))
    else:
        post_event(event)


def boom():
    raise ValueError("nope")


def bad_param(value):
    play_note(60)  # processor-only, called in the controller


define_parameter("ctx_seen", "ctx", "")
define_parameter("ctx_controller", "ctx", "")
define_parameter("async_error", "err", "")
define_parameter("bad", "bad", 0, 0, 10, on_change=bad_param)
