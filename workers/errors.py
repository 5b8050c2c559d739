"""The base of errors caused by bad input (a stream, file or setting), not by a bug."""


class InputError(ValueError):
    """Bad input; the message names what is wrong and what was expected."""
