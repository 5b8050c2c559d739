"""Protocol files and the schema that validates them."""

from experiment_protocols.schema import (
    DEFAULT_PROTOCOL,
    PROTOCOL_DIR,
    Protocol,
    ProtocolError,
    load_protocol,
)

__all__ = ["DEFAULT_PROTOCOL", "PROTOCOL_DIR", "Protocol", "ProtocolError", "load_protocol"]
