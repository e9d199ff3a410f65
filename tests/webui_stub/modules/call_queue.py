"""Mirrors how A1111 1.10 modules/call_queue.py (wrap_gradio_call, read at commit 00dfe27; Forge @dfdcbab and
reForge @3b56b26 keep the display) shows an exception raised while generating: the error output becomes
``<div class='error'>`` + ``html.escape(f"{type(e).__name__}: {e}")`` + ``</div>``, in an HTML component with no
white-space rule (style.css), so the browser shows every newline of the message as a space."""

import html


def wrap_gradio_call(func, extra_outputs=None):
    def f(*args, **kwargs):
        try:
            return tuple(func(*args, **kwargs))
        except Exception as e:
            error_message = f"{type(e).__name__}: {e}"
            return tuple((extra_outputs or [None, ""]) + [f"<div class='error'>{html.escape(error_message)}</div>"])

    return f
