"""ZeroMQ messages: typed, versioned, validated; bad ones raise MessageError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zmq

from workers import transport
from workers.messages import (
    MAX_MESSAGE_BYTES,
    EpochMessage,
    MessageError,
    array_spec,
    decode,
    encode,
)


def _epoch(x: np.ndarray) -> EpochMessage:
    return EpochMessage(
        session="s",
        trial_id=3,
        marker={"event": "stimulus_onset"},
        ch_names=["a", "b"],
        sfreq=250.0,
        tmin=-0.2,
        quality={"flags": []},
        window_end_lsl=1.0,
        sent_lsl=1.01,
        arrays=[array_spec(x)],
    )


def test_round_trip_keeps_header_and_array():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    msg, arrays = decode(encode(_epoch(x), (x,)))
    assert isinstance(msg, EpochMessage)
    assert msg.trial_id == 3
    np.testing.assert_array_equal(arrays[0], x)


def test_wrong_version_unknown_type_bad_json_and_shape_are_rejected():
    x = np.zeros((2, 5), np.float32)
    frames = encode(_epoch(x), (x,))
    header = json.loads(frames[0])
    with pytest.raises(MessageError, match="schema version"):
        decode([json.dumps({**header, "v": 99}).encode(), frames[1]])
    with pytest.raises(MessageError, match="unknown message type"):
        decode([json.dumps({**header, "type": "nope"}).encode(), frames[1]])
    with pytest.raises(MessageError, match="not JSON"):
        decode([b"{oops", frames[1]])
    with pytest.raises(MessageError, match="does not match"):
        decode([frames[0], frames[1][:-4]])
    with pytest.raises(MessageError, match="trial_id"):
        decode([json.dumps({**header, "trial_id": -1}).encode(), frames[1]])
    with pytest.raises(MessageError, match="exceeds"):
        decode([frames[0], b"\0" * (MAX_MESSAGE_BYTES + 1)])


def test_non_loopback_bind_requires_curve():
    ctx = zmq.Context.instance()
    with pytest.raises(transport.InsecureEndpointError, match="CURVE"):
        transport.bind(ctx, zmq.PUB, "tcp://0.0.0.0:0")
    assert transport.is_local_endpoint("tcp://127.0.0.1:5556")
    assert transport.is_local_endpoint("ipc:///tmp/x")
    assert not transport.is_local_endpoint("tcp://192.0.2.10:5556")


def test_curve_server_accepts_only_authorised_clients(tmp_path, free_port):
    import zmq.auth

    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    keys.mkdir()
    authorized.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(keys, "server")
    client_pub, client_sec = zmq.auth.create_certificates(keys, "client")
    _, stranger_sec = zmq.auth.create_certificates(keys, "stranger")
    (authorized / "client.key").write_text(Path(client_pub).read_text())
    ctx = zmq.Context()
    server, auth = transport.bind(
        ctx,
        zmq.REP,
        f"tcp://0.0.0.0:{free_port}",
        secret_key=server_sec,
        authorized_dir=str(authorized),
    )
    try:

        def client(secret: str) -> zmq.Socket:
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            pub, sec = zmq.auth.load_certificate(secret)
            sock.curve_secretkey, sock.curve_publickey = sec, pub
            sock.curve_serverkey = zmq.auth.load_certificate(server_pub)[0]
            sock.connect(f"tcp://127.0.0.1:{free_port}")
            return sock

        good = client(client_sec)
        good.send(b"ping")
        assert server.poll(5000)
        assert server.recv() == b"ping"
        server.send(b"pong")
        assert good.recv() == b"pong"
        bad = client(stranger_sec)
        bad.send(b"ping")
        assert not server.poll(1000)
        good.close()
        bad.close()
    finally:
        server.close()
        auth.stop()
        ctx.term()
