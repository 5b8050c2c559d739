"""The client side of the worker's ROUTER socket (tests, benchmarks, the session loop)."""

from __future__ import annotations

import numpy as np
import zmq

from workers import transport
from workers.messages import Message, decode, encode


class GenerationClient:
    """A DEALER client of the worker (tests, benchmarks, the session loop).

    Sends ``[b"", *frames]`` and reads the reply behind the same delimiter, so that it
    talks to the ROUTER exactly as a REQ socket would, without REQ's lock-step.
    """

    def __init__(
        self, endpoint: str, *, secret_key: str | None = None, server_public_key: str | None = None
    ) -> None:
        self.sock = transport.connect(
            zmq.Context.instance(),
            zmq.DEALER,
            endpoint,
            secret_key=secret_key,
            server_public_key=server_public_key,
        )

    def send_frames(self, frames: list[bytes]) -> None:
        """Send raw payload frames (for malformed-message tests)."""
        self.sock.send_multipart([b"", *frames])

    def receive(self, timeout_s: float) -> tuple[Message, list[np.ndarray]]:
        """The next reply; raises TimeoutError."""
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply within {timeout_s} s")
        frames = self.sock.recv_multipart()
        if frames and frames[0] == b"":
            frames = frames[1:]
        return decode(frames)

    def request(
        self, msg: Message, arrays: tuple[np.ndarray, ...] = (), timeout_s: float = 30.0
    ) -> tuple[Message, list[np.ndarray]]:
        """Send one message and wait for its reply."""
        self.send_frames(encode(msg, arrays))
        return self.receive(timeout_s)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(0)
