"""The experimenter's dashboard (``eegs dashboard``): a live page beside the session.

It only subscribes to what the session's processes already publish (the EEG and marker
LSL streams, ``events.jsonl``, the worker's status over ZeroMQ), so it is never in the
path of a marker or an epoch, and the session supervises it as an optional child whose
crash is logged and ignored. See docs/architecture.md section 12.
"""

#: Where ``eegs pilot``/``run`` hand the dashboard its tokens (never on the command line).
TOKEN_ENV = "EEGS_DASHBOARD_TOKEN"
OBSERVER_TOKEN_ENV = "EEGS_DASHBOARD_OBSERVER_TOKEN"


def url(host: str, port: int, token: str) -> str:
    """The page's address with its token."""
    return f"http://{host}:{port}/?token={token}"
