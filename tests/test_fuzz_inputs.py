"""Every input surface's parser, fuzzed: one bounded parser, one rule, never a traceback.

Property-based (Hypothesis; ``EEGS_FUZZ_EXAMPLES=N`` for more examples): markers,
response-box samples, ZeroMQ headers, dashboard control requests, protocol files,
session files, key files and command-line paths each get hostile values, and each must
either be read into something every later use can take (finite numbers, int64 integers,
shallow nesting, valid Unicode) or be refused with a reason, the refusal of its own
surface (a command: exit status 2). The running services are fuzzed in
``test_fuzz_services.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from helpers import run_main
from hostile import (
    dumps,
    field_values,
    fuzz_settings,
    fuzz_timeout,
    markers,
    mutated_texts,
    nested,
    numbers,
    object_text,
    text,
    trees,
)
from hypothesis import given
from hypothesis import strategies as st

from experiment_protocols import Protocol, ProtocolError, load_protocol
from experiment_protocols.bounded import (
    MAX_DEPTH,
    MAX_INT,
    InputRejected,
    check_path_text,
    check_tree,
    parse_json,
)
from workers.messages import (
    MAX_DEADLINE_S,
    MAX_TRIAL_ID,
    SCHEMA_VERSION,
    EpochMessage,
    ImageRequest,
    MessageError,
    RatingMessage,
    StatusRequest,
    array_spec,
    decode,
    encode,
    parse_marker,
    trial_id_of,
)
from workers.session_store import (
    EVENTS_FILE,
    MAX_RECORD_DEPTH,
    SESSION_FILE,
    EventTail,
    SessionStore,
    read_events,
)

pytestmark = pytest.mark.timeout(fuzz_timeout(120))


def _strict_loads(text: str) -> object:
    """What a browser's JSON.parse does: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in strict JSON")

    return json.loads(text, parse_constant=refuse)


def _outcome(fn, errors):
    """(value, None) or (None, the error of one of ``errors``): the two outcomes allowed."""
    try:
        return fn(), None
    except errors as err:
        return None, err


def _usable(obj: object, max_depth: int = MAX_DEPTH) -> None:
    """What every later use needs of parsed input: strict JSON, int64, shallow, Unicode."""
    text = json.dumps(obj, allow_nan=False, ensure_ascii=False)
    text.encode()  # no lone surrogate
    check_tree(obj, max_depth=max_depth)  # the rule holds for what came out
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        assert depth <= max_depth
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
        elif isinstance(node, int) and not isinstance(node, bool):
            assert abs(node) <= MAX_INT
        elif isinstance(node, float):
            assert math.isfinite(node)


# -- the parser itself -------------------------------------------------------------------


@fuzz_settings(150)
@given(st.one_of(markers(), trees.map(dumps), mutated_texts(trees.map(dumps))))
def test_the_bounded_parser_reads_usable_values_or_refuses(raw):
    for non_finite in ("refuse", "null"):
        obj, err = _outcome(
            lambda nf=non_finite: parse_json(raw, what="input", max_bytes=64 << 10, non_finite=nf),
            InputRejected,
        )
        if err is None:
            _usable(obj)
        else:
            assert err.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (nested(5000), "nests deeper"),
        (nested(33), "nests deeper"),
        ('{"a": ' + "9" * 5000 + "}", "not usable JSON"),
        ('{"a": ' + str(2**63) + "}", "out of range"),
        ('{"a": NaN}', "not a finite number"),
        ('{"a": 1e999}', "not a finite number"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ("{" * 100_000, "exceeds"),
    ],
)
def test_the_bounded_parser_names_its_reason(raw, reason):
    with pytest.raises(InputRejected, match=reason):
        parse_json(raw, what="input", max_bytes=64 << 10)
    assert parse_json(nested(MAX_DEPTH - 1), what="x", max_bytes=1000)  # at the limit: read


def test_non_finite_numbers_read_as_null_where_a_whole_input_must_not_be_lost():
    got = parse_json('{"a": NaN, "b": [Infinity, 1e999], "c": 1.5}', what="m", max_bytes=100,
                     non_finite="null")  # fmt: skip
    assert got == {"a": None, "b": [None, None], "c": 1.5}


# -- LSL markers -------------------------------------------------------------------------


@fuzz_settings(150)
@given(markers())
def test_a_marker_is_an_object_with_a_string_event_and_usable_fields_or_refused(raw):
    marker, err = _outcome(lambda: parse_marker(raw), MessageError)
    if err is not None:
        assert err.reason
        return
    assert isinstance(marker["event"], str)
    _usable(marker)
    trial = trial_id_of(marker.get("trial"))
    assert trial is None or 0 <= trial <= MAX_TRIAL_ID
    f"epoch-{trial or 0:06d}.npz".encode()  # fits a file name


def test_a_huge_or_non_finite_trial_is_no_trial_id():
    with pytest.raises(MessageError, match="trial: integer of 21 digits is out of range"):
        parse_marker('{"event": "stimulus_onset", "trial": 100000000000000000000}')
    for raw in (
        '{"event": "stimulus_onset", "trial": ' + str(2**62) + "}",
        '{"event": "stimulus_onset", "trial": ' + str(2**31) + "}",
        '{"event": "stimulus_onset", "trial": NaN}',
        '{"event": "stimulus_onset", "trial": -1}',
        '{"event": "stimulus_onset", "trial": true}',
    ):
        assert trial_id_of(parse_marker(raw).get("trial")) is None, raw
    assert trial_id_of(parse_marker('{"event": "x", "trial": 2147483647}')["trial"]) == 2**31 - 1


# -- response-box samples ----------------------------------------------------------------


@fuzz_settings(150)
@given(st.one_of(st.builds(lambda t: object_text({"key": t}), field_values), markers(), text))
def test_a_response_box_sample_is_a_short_key_name_or_refused(raw):
    from app.presentation.responses import MAX_KEY_CHARS, parse_press

    try:
        key = parse_press(raw)
    except ValueError:
        return
    assert isinstance(key, str)
    assert 0 < len(key) <= MAX_KEY_CHARS
    key.encode()


def test_a_deeply_nested_press_is_refused_not_a_recursion_error():
    from app.presentation.responses import parse_press

    for raw in ('{"key": ' + nested(100_000) + "}", nested(900), '"' + "7" * 5000 + '"'):
        with pytest.raises(ValueError):
            parse_press(raw)


# -- ZeroMQ message headers --------------------------------------------------------------

_X = np.zeros((2, 5), np.float32)
_VALID = {
    "epoch": (
        EpochMessage.of(
            _X,
            session="s",
            trial_id=3,
            marker={"event": "stimulus_onset"},
            ch_names=["Fz", "Pz"],
            sfreq=250.0,
            tmin=-0.2,
        ),
        (_X,),
    ),  # fmt: skip
    "image_request": (
        ImageRequest(session="s", block="closed_loop", round=1, n_images=4, trials=[1, 2]),
        (),
    ),
    "rating": (RatingMessage(session="s", trial_id=3, valence=5.0, scale=(1.0, 9.0)), ()),
    "status_request": (StatusRequest(), ()),
}


@st.composite
def _hostile_frames(draw) -> list[bytes]:
    msg, arrays = _VALID[draw(st.sampled_from(sorted(_VALID)))]
    frames = encode(msg, arrays)
    header = json.loads(frames[0])
    key = draw(st.sampled_from([*header, "extra"]))
    header[key] = draw(field_values)
    text = object_text(header) if draw(st.booleans()) else dumps(header)
    return [text.encode(errors="surrogatepass"), *frames[1:]]


@fuzz_settings(150)
@given(_hostile_frames())
def test_a_message_header_validates_into_bounded_fields_or_is_refused(frames):
    decoded, err = _outcome(lambda: decode(frames), MessageError)
    if err is not None:
        assert str(err)
        return
    msg = decoded[0]
    header = json.loads(msg.model_dump_json())
    _usable(header)
    for name in ("trial_id",):
        if name in header:
            assert 0 <= header[name] <= MAX_TRIAL_ID
    if isinstance(msg, ImageRequest):
        assert msg.deadline_s is None or 0 < msg.deadline_s <= MAX_DEADLINE_S
        assert all(0 <= t <= MAX_TRIAL_ID for t in msg.trials)


@pytest.mark.parametrize("deadline", [1e300, 1e308, 3601.0, 10.0**20])
def test_an_image_request_with_a_huge_deadline_is_refused(deadline):
    frames = encode(ImageRequest(session="s", block="b", round=1, n_images=4))
    header = {**json.loads(frames[0]), "deadline_s": deadline, "v": SCHEMA_VERSION}
    with pytest.raises(MessageError, match="deadline_s"):
        decode([json.dumps(header).encode()])


def test_an_array_spec_cannot_claim_more_than_int32_per_dimension():
    frames = encode(*_VALID["epoch"])
    header = json.loads(frames[0])
    header["arrays"] = [{"shape": [2**40, 2**40], "dtype": "float32"}]
    with pytest.raises(MessageError, match="arrays"):
        decode([json.dumps(header).encode(), frames[1]])
    header["arrays"] = [array_spec(_X).model_dump()]
    assert decode([json.dumps(header).encode(), frames[1]])[0].trial_id == 3


# -- protocol files ----------------------------------------------------------------------


def _leaf_keys() -> list[tuple[str, ...]]:
    """Every key of a protocol, as a path of table names (list sections left out)."""
    from pydantic import BaseModel

    out: list[tuple[str, ...]] = []

    def walk(model: type[BaseModel], prefix: tuple[str, ...]) -> None:
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, (*prefix, name))
            else:
                out.append((*prefix, name))

    walk(Protocol, ())
    return out


_KEYS = _leaf_keys()
_toml_values = st.one_of(
    numbers,
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["a\x00b", "\x00"]),
    st.lists(numbers, max_size=5),
    st.lists(st.text(max_size=5), max_size=3),
)


@st.composite
def _hostile_protocols(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:  # text no serialiser writes
        key = ".".join(draw(st.sampled_from(_KEYS)))
        section, _, leaf = key.rpartition(".")
        value = draw(
            st.sampled_from(
                [nested(3000), nested(40), "9" * 5000, "9" * 4000, '"a\\u0000b"', "nan", "1e17"]
            )
        )
        head = f"[{section}]\n" if section else ""
        return f"{head}{leaf} = {value}\n".encode()
    data: dict = {}
    for path in draw(st.lists(st.sampled_from(_KEYS), min_size=1, max_size=4)):
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = draw(_toml_values)
    return tomli_w.dumps(data).encode()


@fuzz_settings(100)
@given(_hostile_protocols())
def test_a_protocol_file_is_a_valid_protocol_or_a_protocol_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("p") / "p.toml"
    path.write_bytes(raw)
    protocol, err = _outcome(lambda: load_protocol(path), ProtocolError)
    if err is not None:
        assert err.field
        assert err.message
        return
    _usable(protocol.model_dump(mode="json"))
    for block in protocol.presentation.blocks:
        assert block.n_trials <= 10_000


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("[generation]\nseed = " + "9" * 5000 + "\n", "(file)", "not usable TOML"),
        ("[preprocessing]\nnotch_hz = " + nested(3000) + "\n", "(file)", "nests deeper"),
        ('[generation.pool]\nfolder = "a\\u0000b"\n', "generation.pool.folder", "NUL"),
        ('[[presentation.blocks]]\nkind = "calibration"\nn_trials = 1e17\n',
         "presentation.blocks.0.n_trials", "valid integer"),
        ('[[presentation.blocks]]\nkind = "calibration"\nn_trials = 100000000000000000\n',
         "presentation.blocks.0.n_trials", ""),
        ("[streams]\nsfreq = 250.0\n[preprocessing]\nnotch_hz = [50.0, 200.0]\n",
         "(top level)", "Nyquist"),
        ("[preprocessing]\nnotch_hz = [" + ", ".join(["50.0"] * 10_000) + "]\n",
         "preprocessing.notch_hz", ""),
        ("[streams]\nbuffer_s = true\n", "streams.buffer_s", "valid number"),
        ("[meta]\nname = 1979-05-27\n", "meta.name", "date"),
    ],
)  # fmt: skip
def test_the_issues_protocols_are_refused_naming_the_field(tmp_path, text, field, reason):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProtocolError) as err:
        load_protocol(path)
    assert err.value.field == field
    assert reason in err.value.message
    assert run_main(["doctor", "--protocol", str(path), "--timeout", "0.1"]) == 2


def test_a_notch_above_the_streams_nyquist_frequency_stops_the_acquisition(tmp_path, stream_name):
    """Without streams.sfreq the protocol cannot tell; the stream's rate is checked at connect."""
    from lsl_source import NoiseSource

    from workers.acquisition import Acquisition, AcquisitionError

    source = NoiseSource(stream_name, ["Fz", "Cz"], sfreq=100.0, markers=False).start()
    protocol = load_protocol().with_overrides(
        {"streams.eeg": stream_name, "preprocessing.notch_hz": [60.0], "streams.sfreq": None}
    )
    store = SessionStore(tmp_path / "s").open(role="test")
    try:
        with pytest.raises(AcquisitionError, match="notch_hz = 60 Hz is not below the Nyquist"):
            Acquisition(protocol, store, None).connect()
    finally:
        store.close()
        source.stop()


# -- command-line paths ------------------------------------------------------------------


@fuzz_settings(60)
@given(st.one_of(text, st.text(max_size=30)).filter(lambda t: not t.startswith("-")))
def test_a_hostile_path_on_the_command_line_exits_2(tmp_path_factory, capsys, name):
    out = tmp_path_factory.mktemp("cli") / "out-epo.fif"
    assert run_main(["export-epochs", name, str(out)]) == 2  # no session there: a reason
    assert "Traceback" not in capsys.readouterr().err


def test_a_nul_in_a_path_exits_2_naming_it(capsys):
    assert run_main(["summarize", "sess\x00ion"]) == 2
    assert "NUL" in capsys.readouterr().err
    with pytest.raises(InputRejected, match="NUL"):
        check_path_text("a\x00b")


def test_export_epochs_onto_an_existing_file_and_keys_on_a_file_exit_2(tmp_path, capsys):
    store = SessionStore(tmp_path / "s").open(role="test")
    quality = {"flags": [], "max_ptp_uv": 0.0}
    meta = {"trial_id": 1, "marker": {}, "t_marker_lsl": 1.0, "ch_names": ["Fz", "Pz"],
            "sfreq": 250.0, "tmin": 0.0, "quality": quality}  # fmt: skip
    store.write_epoch(1, np.zeros((2, 5)), meta)
    store.close()
    taken = tmp_path / "taken-epo.fif"
    taken.write_text("a lab's file")
    assert run_main(["export-epochs", str(tmp_path / "s"), str(taken)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert taken.read_text() == "a lab's file"
    assert run_main(["keys", "--dir", str(taken), "a", "b"]) == 2
    assert "not a folder" in capsys.readouterr().err


# -- session files -----------------------------------------------------------------------


@fuzz_settings(60)
@given(st.one_of(trees.map(dumps), mutated_texts(trees.map(dumps)), st.just(nested(100_000))))
def test_a_hostile_session_json_is_an_input_error(tmp_path_factory, raw):
    from workers.errors import InputError

    root = tmp_path_factory.mktemp("s")
    (root / SESSION_FILE).write_bytes(raw.encode(errors="surrogatepass"))
    info, err = _outcome(lambda: SessionStore(root).read_info(), InputError)
    if err is not None:
        assert SESSION_FILE in str(err)
        return
    assert isinstance(info, dict)
    _usable(info, MAX_RECORD_DEPTH)


def test_a_session_json_nested_100000_deep_exits_2_in_summarize_and_resume(tmp_path, capsys):
    (tmp_path / SESSION_FILE).write_text(nested(100_000))
    for command in ("summarize", "resume"):
        assert run_main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "nests deeper" in err
        assert "Traceback" not in err


@fuzz_settings(60)
@given(st.lists(st.one_of(markers(), trees.map(dumps), st.just(nested(100_000))), max_size=6))
def test_event_readers_keep_every_object_line_and_skip_the_rest(tmp_path_factory, lines):
    root = tmp_path_factory.mktemp("s")
    good = [{"event": "good", "k": i} for i in range(3)]
    body = [json.dumps(good[0]), *lines, json.dumps(good[1]), json.dumps(good[2])]
    (root / EVENTS_FILE).write_bytes(
        b"".join(line.replace("\n", " ").encode(errors="surrogatepass") + b"\n" for line in body)
    )
    events = list(read_events(root / EVENTS_FILE))
    assert [e for e in events if e.get("event") == "good"] == good  # nothing valid lost
    tailed = EventTail(root / EVENTS_FILE).new()
    assert [e for e in tailed if e.get("event") == "good"] == good
    for e in events + tailed:
        assert isinstance(e, dict)
        _usable(e, MAX_RECORD_DEPTH)  # our records wrap an input (a marker) a few levels


@fuzz_settings(30)
@given(st.one_of(trees.map(dumps), st.just(nested(5000)), st.just('{"trial_id": 1e999}')))
def test_an_epoch_whose_metadata_is_hostile_is_left_out(tmp_path_factory, meta):
    import io

    root = tmp_path_factory.mktemp("s")
    store = SessionStore(root).open(role="test")
    store.write_epoch(1, np.ones((2, 5)), {"trial_id": 1})
    buf = io.BytesIO()
    np.savez(buf, data=np.ones((2, 5), np.float32),
             meta=np.frombuffer(meta.encode(errors="surrogatepass"), np.uint8))  # fmt: skip
    (root / "epochs" / "epoch-000002.npz").write_bytes(buf.getvalue())
    store.close()
    ids = [e.trial_id for e in SessionStore(root).epochs()]
    assert ids[0] == 1
    assert all(0 <= t <= MAX_TRIAL_ID for t in ids)


# -- key files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def curve_pair(tmp_path_factory):
    import zmq.auth

    folder = tmp_path_factory.mktemp("keys")
    public, secret = zmq.auth.create_certificates(str(folder), "server")
    return folder, public, secret


@fuzz_settings(40)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [
                b'public-key = "x"\n',
                b'public-key = "' + b"\xff" * 40 + b'"\n',
                b'secret-key = "' + b"a" * 40 + b'"\n',
            ]
        ),
    )
)
def test_a_hostile_key_file_is_a_key_file_error(tmp_path_factory, raw):  # fmt: skip
    from workers.transport import KeyFileError, load_key

    path = tmp_path_factory.mktemp("k") / "x.key_secret"
    path.write_bytes(raw)
    for secret in (True, False):
        pair, err = _outcome(
            lambda s=secret: load_key(path, secret=s, setting="network.curve_secret_key"),
            KeyFileError,
        )
        if err is not None:
            assert "network.curve_secret_key" in str(err)
            continue
        assert len(pair[0]) == 40
        assert pair[1] is not None or not secret


def test_a_missing_public_or_directory_secret_key_stops_a_server_with_a_reason(curve_pair):
    import zmq

    from workers.transport import KeyFileError, bind, connect

    folder, public, _ = curve_pair
    authorized = folder / "authorized"
    authorized.mkdir(exist_ok=True)
    (authorized / "client.key").write_text(Path(public).read_text())
    ctx = zmq.Context.instance()
    for bad, reason in ((folder / "missing.key_secret", "cannot read"),
                        (public, "only a public key"), (folder, "not a regular file"),
                        ("/dev/zero", "not a regular file")):  # fmt: skip
        with pytest.raises(KeyFileError, match=reason):
            bind(ctx, zmq.ROUTER, "tcp://0.0.0.0:5999", secret_key=str(bad),
                 authorized_dir=str(authorized))  # fmt: skip
        with pytest.raises(KeyFileError, match=reason):
            connect(ctx, zmq.DEALER, "tcp://192.0.2.1:5999", secret_key=str(bad),
                    server_public_key=public)  # fmt: skip
    (authorized / "broken.key").write_text("not a certificate")
    with pytest.raises(KeyFileError, match="curve_authorized_dir"):
        bind(ctx, zmq.ROUTER, "tcp://0.0.0.0:5999", secret_key=str(curve_pair[2]),
             authorized_dir=str(authorized))  # fmt: skip


# -- the dashboard -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard_client(tmp_path_factory):
    from starlette.testclient import TestClient

    from app.dashboard.server import Tokens, build_app
    from app.dashboard.view import View

    root = tmp_path_factory.mktemp("dash") / "s"
    SessionStore(root).open(role="session").close()
    tokens = Tokens()
    app = build_app(View(root, live=False), tokens)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens


@fuzz_settings(60)
@given(st.one_of(trees.map(dumps), markers(), st.just(nested(100_000)), st.binary(max_size=100)))
def test_post_control_with_any_body_is_a_4xx_or_5xx_answer_never_a_500(dashboard_client, body):
    client, tokens = dashboard_client
    if isinstance(body, str):
        body = body.encode(errors="surrogatepass")
    res = client.post(f"/control?token={tokens.controller}", content=body)
    assert res.status_code in (400, 503), res.text  # bad command, or no presentation here
    assert client.post("/control?token=wrong", content=body).status_code == 403


def test_a_non_finite_trial_never_reaches_a_page_as_nan(tmp_path, stream_name):
    import pylsl
    from helpers import wait_until

    from app.dashboard.server import page_json
    from app.dashboard.sources import MarkerSource
    from app.dashboard.view import View
    from workers.lsl_clock import make_marker_outlet

    outlet = make_marker_outlet(stream_name)
    SessionStore(tmp_path / "s").open(role="session").close()
    source = MarkerSource(stream_name)
    try:
        view = View(tmp_path / "s", markers=source)
        wait_until(lambda: source.connected, 20)
        assert outlet.wait_for_consumers(20)
        for raw in ('{"event": "stimulus_onset", "trial": NaN, "x": Infinity}',
                    '{"event": "stimulus_onset", "trial": 1e999}'):  # fmt: skip
            outlet.push_sample([raw], pylsl.local_clock())
        wait_until(lambda: source.count >= 2, 20)
        pages = [page_json(view.tick()), page_json(view.snapshot())]
        for page in pages:
            _strict_loads(page)  # what JSON.parse in the page accepts
        assert "NaN" not in pages[1]
        assert "Infinity" not in pages[1]
        assert page_json({"a": float("nan"), "b": [float("inf")]}) == '{"a": null, "b": [null]}'
    finally:
        source.close()
        with contextlib.suppress(Exception):
            del outlet
