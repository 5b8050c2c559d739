"""The one parser of untrusted input: every boundary of EEGS reads through it.

Whatever a process reads from outside itself (an LSL marker or response-box sample, a
ZeroMQ message header, a dashboard request, a protocol file, a session file, a key
file) is parsed here, under one rule (docs/architecture.md section 10):

- a size limit, checked before parsing (each surface names its own);
- at most :data:`MAX_DEPTH` levels of nesting, checked without recursion;
- every integer within ±:data:`MAX_INT` (it fits an int64: numpy arrays, file names,
  C-level timeouts), so a 5,000-digit number never reaches a later use;
- numbers finite: NaN, Infinity and what overflows to it are refused, or read as
  ``None`` where losing the whole input would lose more (a lab's marker);
- text valid Unicode (no lone surrogate), and no NUL where text may become a path.

Anything else is an :class:`InputRejected` whose message is the reason and whose
``where`` names the offending field. A long-running service logs it and reads on; a
command exits with status 2 naming the input. Ranges of single fields (a trial id, a
deadline) are the job of the pydantic models that take the parsed value.

This module sits on the bottom floor, beside the protocol schema that uses it, so that
``workers/`` and ``app/`` can use it too; it imports nothing of the project.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

#: Deepest nesting any input may have; our own formats need fewer than 8 levels.
MAX_DEPTH = 32
#: Largest integer magnitude any input may hold (int64).
MAX_INT = 2**63 - 1
#: Longest path text a command or a protocol may name (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Longest single file or folder name (NAME_MAX).
MAX_NAME_BYTES = 255

NonFinite = Literal["refuse", "null", "keep"]


class InputRejected(ValueError):
    """Input refused by the bounded parser.

    ``what`` names the input (``"marker"``, ``"protocol file P"``), ``where`` the field
    inside it (dotted; '' for the whole), ``reason`` what is wrong with it.
    """

    def __init__(self, reason: str, where: str = "", what: str = "") -> None:
        self.reason, self.where, self.what = reason, where, what
        at = f" at {where}" if where else ""
        super().__init__(
            f"{what}{at}: {reason}" if what else f"{where}: {reason}" if where else reason
        )


def _where(entry: tuple | None, key: Any = None) -> str:
    """The dotted path of a walk entry ``(value, depth, parent, key)`` (and ``key`` below)."""
    keys = [] if key is None else [str(key)]
    while entry is not None and entry[2] is not None:
        keys.append(str(entry[3]))
        entry = entry[2]
    return ".".join(reversed(keys))


def check_tree(
    obj: Any,
    *,
    max_depth: int = MAX_DEPTH,
    non_finite: NonFinite = "refuse",
    allow_nul: bool = True,
    nulled: list[str] | None = None,
) -> Any:
    """Walk parsed data without recursion and apply the rule; returns it (floats fixed).

    ``non_finite``: ``"refuse"`` raises, ``"null"`` replaces by None (in place, the
    dotted path of each appended to ``nulled``), ``"keep"`` leaves the number for a schema
    to refuse by field name (protocol files).
    """
    nulled = [] if nulled is None else nulled
    if not isinstance(obj, dict | list):
        checked = _check_scalar(obj, None, None, non_finite, allow_nul)
        if checked is not obj:
            nulled.append("")
        return checked
    stack: list[tuple] = [(obj, 1, None, None)]
    while stack:
        entry = stack.pop()
        container, depth = entry[0], entry[1]
        if depth > max_depth:
            raise InputRejected(f"nests deeper than {max_depth} levels", _where(entry))
        items = container.items() if isinstance(container, dict) else enumerate(container)
        fixes = []
        for key, value in items:
            if isinstance(key, str):
                _check_scalar(key, entry, key, non_finite, allow_nul)
            if isinstance(value, dict | list):
                stack.append((value, depth + 1, entry, key))
                continue
            checked = _check_scalar(value, entry, key, non_finite, allow_nul)
            if checked is not value:
                fixes.append(key)
        for key in fixes:
            container[key] = None
            nulled.append(_where(entry, key))
    return obj


def _check_scalar(value: Any, entry: tuple | None, key: Any, non_finite: str, allow_nul: bool):
    """One leaf under the rule; returns it, or None for a non-finite number read as null."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise InputRejected(
                    "text holds a lone surrogate (not valid Unicode)", _where(entry, key)
                ) from None
        if not allow_nul and "\0" in value:
            raise InputRejected("text holds a NUL character", _where(entry, key))
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            digits = len(str(abs(value)))
            raise InputRejected(f"integer of {digits} digits is out of range", _where(entry, key))
    elif isinstance(value, float):
        if not math.isfinite(value):
            if non_finite == "refuse":
                raise InputRejected(f"{value} is not a finite number", _where(entry, key))
            if non_finite == "null":
                return None
    else:  # a TOML date or time: no input of EEGS takes one
        raise InputRejected(
            f"a {type(value).__name__} is not a value EEGS reads", _where(entry, key)
        )
    return value


def _refuse_constant(name: str) -> float:
    raise InputRejected(f"{name} is not a finite number")


def _null_constant(name: str) -> float:
    return float(name)  # NaN, Infinity, -Infinity: made None by the walk, which notes where


def parse_json(
    text: str | bytes,
    *,
    what: str,
    max_bytes: int,
    non_finite: NonFinite = "refuse",
    max_depth: int = MAX_DEPTH,
    allow_nul: bool = True,
    nulled: list[str] | None = None,
) -> Any:
    """``json.loads`` under the rule; raises :class:`InputRejected` naming ``what``.

    ``non_finite="null"`` reads NaN, Infinity and overflowing numbers as None (markers:
    refusing a lab's whole marker would lose its trial), noting each field in
    ``nulled``; ``"refuse"`` refuses them (our own message headers).
    """
    size = len(text.encode(errors="surrogatepass") if isinstance(text, str) else text)
    if size > max_bytes:
        raise InputRejected(f"size of {size} bytes exceeds {max_bytes}", what=what)
    constant = _refuse_constant if non_finite == "refuse" else _null_constant
    try:
        obj = json.loads(text, parse_constant=constant)
    except RecursionError:
        raise InputRejected(f"nests deeper than {max_depth} levels", what=what) from None
    except InputRejected as err:
        raise InputRejected(err.reason, what=what) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputRejected(f"not JSON: {err}", what=what) from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise InputRejected(f"not usable JSON: {err}", what=what) from None
    return _checked(
        obj, what, max_depth=max_depth, non_finite=non_finite, allow_nul=allow_nul, nulled=nulled
    )


def parse_toml(raw: bytes, *, what: str, max_bytes: int) -> dict[str, Any]:
    """``tomllib.loads`` under the rule; non-finite floats are left to the schema.

    No NUL is allowed in any string (a protocol's strings are names and paths).
    """
    if len(raw) > max_bytes:
        raise InputRejected(f"larger than {max_bytes} bytes", what=what)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InputRejected(f"nests deeper than {MAX_DEPTH} levels", what=what) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputRejected(f"not valid TOML: {err}", what=what) from None
    except ValueError as err:  # an integer of more digits than Python converts
        raise InputRejected(f"not usable TOML: {err}", what=what) from None
    return _checked(data, what, non_finite="keep", allow_nul=False)


def _checked(obj: Any, what: str, **rule: Any) -> Any:
    try:
        return check_tree(obj, **rule)
    except InputRejected as err:
        raise InputRejected(err.reason, err.where, what) from None


def read_limited(path: str | Path, *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises :class:`InputRejected`.

    A directory, a device or a FIFO (``/dev/zero``) is refused before it is read, and a
    file that grows past the limit while read is refused too.
    """
    path = check_path_text(path, what)
    named = f"{what} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise InputRejected(f"cannot read: {err.strerror}", what=named) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputRejected("not a regular file", what=named)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as err:
        raise InputRejected(f"cannot read: {err.strerror}", what=named) from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise InputRejected(f"larger than {max_bytes} bytes", what=named)
    return raw


def read_json_file(
    path: str | Path,
    *,
    what: str,
    max_bytes: int,
    non_finite: NonFinite = "null",
    max_depth: int = MAX_DEPTH,
) -> Any:
    """A JSON file under the rule (session files: ``session.json``, sidecars)."""
    raw = read_limited(path, max_bytes=max_bytes, what=what)
    return parse_json(
        raw, what=f"{what} {path}", max_bytes=max_bytes, non_finite=non_finite, max_depth=max_depth
    )


def check_path_text(path: str | Path, what: str = "path") -> Path:
    """``path`` as a Path if its text can name a file; raises :class:`InputRejected`.

    No NUL, only what the file system's encoding holds, names of at most
    :data:`MAX_NAME_BYTES` and the whole at most :data:`MAX_PATH_BYTES`.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text:
        raise InputRejected("holds a NUL character", what=f"{what} {text[:200]!r}")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise InputRejected(
            "is not a name the file system can hold", what=f"{what} {text[:200]!r}"
        ) from None
    longest = max((len(os.fsencode(part)) for part in text.split(os.sep)), default=0)
    if longest > MAX_NAME_BYTES:
        raise InputRejected(
            f"a name in it is longer than {MAX_NAME_BYTES} bytes", what=f"{what} {text[:80]!r}..."
        )
    if len(text.encode(errors="surrogateescape")) > MAX_PATH_BYTES:
        raise InputRejected(f"longer than {MAX_PATH_BYTES} bytes", what=f"{what} {text[:80]!r}...")
    return Path(text)
