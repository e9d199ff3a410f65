"""Writing λ files. A save guarantees three things, and does no more than they need:

- **atomic**: the whole file is written and fsynced under a temp name ``.dode-<random>.tmp`` in the target folder
  before it gets its final name, and the folder is fsynced after: a final name only ever shows a complete file, even
  when the process is killed at any moment;
- **never overwrites** (``write_new``): the final name is claimed with a hard link, which fails when the name is
  taken, so an existing file is never replaced and two saves never pick the same name (``write_replacing``, for an
  explicit path, renames over it);
- **no half files**: a save that fails removes its temp file. One that a kill leaves behind is hidden and ends in
  ``.tmp``, so no host lists it; a later save in that folder removes it once it is STALE_TEMP_SECONDS old.

Where the file system has no hard links (FAT, some network shares), Windows claims the name with its rename, which
never replaces; elsewhere an empty file reserves the name and is then replaced, so a kill in that moment can leave
it empty (the loader refuses it by name). Files get mode ``0666 & ~umask``, as every other file the hosts write.
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from .text import printable

log = logging.getLogger(__name__)

TEMP_PREFIX, TEMP_SUFFIX = ".dode-", ".tmp"
STALE_TEMP_SECONDS = 3600  # a save takes seconds; older temp files are left by killed saves


def write_replacing(data: bytes, path: str) -> str:
    """``data`` atomically under ``path``, replacing what is there. Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    temp = _write_temp_file(folder, data)
    try:
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise
    _fsync_folder(folder)
    return path


def write_new(data: bytes, folder: str, stem: str, extension: str) -> str:
    """``data`` atomically under the first free name of ``stem``, ``stem_2``, ``stem_3``, ... (+ ``extension``) in
    ``folder`` (made if missing), never replacing a file. Returns the path."""
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(folder)
    temp = _write_temp_file(folder, data)
    try:
        for counter in range(1, 100_000):
            path = os.path.join(folder, stem + (f"_{counter}" if counter > 1 else "") + extension)
            try:
                _link_without_replacing(temp, path)
            except FileExistsError:
                continue
            _fsync_folder(folder)
            return path
        raise FileExistsError(f"{printable(folder)}: no free file name for {stem!r}.")
    finally:
        _remove_quietly(temp)  # after the link, the data lives on under the final name


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the temp files of saves killed more than STALE_TEMP_SECONDS ago from ``folder``; returns their names.
    A save never fails over this."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > \
                    STALE_TEMP_SECONDS:
                os.remove(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    if removed:
        log.info("removed %d temp file(s) left by interrupted λ saves in %s", len(removed), printable(folder))
    return removed


def _write_temp_file(folder: str, data: bytes) -> str:
    """A new temp file in ``folder`` holding ``data``, fsynced; its path."""
    path = os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        _remove_quietly(path)
        raise
    return path


def _link_without_replacing(temp: str, path: str) -> None:
    """``path`` becomes ``temp``'s content, atomically, or FileExistsError if ``path`` exists (even as a link)."""
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except (OSError, NotImplementedError) as error:  # no hard links on this file system
        log.debug("hard link %s failed (%s); claiming the name without one", path, error)
    if os.name == "nt":
        os.rename(temp, path)  # Windows' rename never replaces: FileExistsError if taken
        return
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # reserve, then replace
    try:
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(path)
        raise


def _fsync_folder(folder: str) -> None:
    """Make a rename or link in ``folder`` durable (POSIX); where a folder cannot be opened or fsynced, skip."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
