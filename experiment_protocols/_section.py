"""The base of every protocol section: unknown keys and non-finite numbers are refused."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

#: No protocol number is larger than this in magnitude (an int32): counts, seeds,
#: sizes and durations all fit every later use (arrays, file names, timeouts); fields
#: whose use allocates or waits have tighter bounds of their own.
MAX_PROTOCOL_NUMBER = 2**31 - 1


class Section(BaseModel):
    """A protocol section: every key known, every number finite, checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _numbers_in_range(cls, value: Any) -> Any:
        stack = [value]
        while stack:
            v = stack.pop()
            if isinstance(v, list | tuple):
                stack.extend(v)
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif (
                isinstance(v, int | float)
                and not isinstance(v, bool)
                and abs(v) > MAX_PROTOCOL_NUMBER
            ):
                raise ValueError(f"{v:g} is beyond ±{MAX_PROTOCOL_NUMBER} (2**31 - 1)")
        return value
