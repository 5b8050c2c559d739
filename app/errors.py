"""Errors that the command line reports as bad input (exit status 2)."""

from __future__ import annotations

from experiment_protocols import ProtocolError
from experiment_protocols.bounded import InputRejected
from workers.errors import InputError

UsageError = (ProtocolError, InputError, InputRejected, FileNotFoundError)
