"""Text for people: untrusted strings made safe to print, and sigmas in a short form."""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    r"""``text`` safe for a terminal or a log: every character a terminal could act on (C0 and C1 controls, ESC,
    CR, LF, DEL, bidi overrides and other format characters, line and paragraph separators, surrogates, private
    and unassigned code points) is written as a ``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN`` escape, as ``repr`` does.
    Spaces (category Zs) stay as they are. Idempotent: the escapes are printable ASCII."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else _escape(ch) for ch in text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(value, limit: int = 60) -> str:
    """An untrusted value for a message: quoted, escaped, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return printable(repr(text[:limit]) + ("..." if len(text) > limit else ""))


def format_sigmas(sigmas) -> str:
    return "[" + ", ".join(f"{float(s):.4g}" for s in sigmas) + "]"
