"""Errors that every process shares: bad input, and a disk that is full."""

from __future__ import annotations

import errno

#: Exit status of a process that stopped because its disk is full (sysexits' EX_IOERR):
#: starting it again on the same disk is futile; the session stops and is resumed on
#: another disk (``eegs resume SESSION --to DIR``).
DISK_FULL_STATUS = 74


class InputError(ValueError):
    """Bad input; the message names what is wrong and what was expected."""


def is_disk_full(err: BaseException) -> bool:
    """True for the OSError of a full disk or an exhausted quota."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
