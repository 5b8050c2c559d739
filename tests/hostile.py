"""Hypothesis strategies of hostile input, and the fuzz tests' settings.

Every input surface (markers, response-box samples, ZeroMQ headers, dashboard requests,
protocol files, session files, key files, command-line paths) is fuzzed with values
built from these: deep nesting, integers far beyond int64, NaN and the infinities,
lone surrogates, NUL characters, oversize text, truncated and random bytes.

The number of examples per test is small by default (the suite has a time budget);
``EEGS_FUZZ_EXAMPLES=N`` runs N per test. Runs are derandomized and keep no example
database, so CI is reproducible.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz_settings(default: int) -> settings:
    """``default`` examples (or ``EEGS_FUZZ_EXAMPLES``), reproducible, no deadline."""
    return settings(
        max_examples=int(os.environ.get("EEGS_FUZZ_EXAMPLES", default)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def fuzz_timeout(seconds: float) -> float:
    """A test's time limit, longer when ``EEGS_FUZZ_EXAMPLES`` asks for many examples."""
    n = int(os.environ.get("EEGS_FUZZ_EXAMPLES", 0))
    return seconds * max(1.0, n / 25)


#: Numbers a broken or hostile sender writes.
numbers = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.integers(min_value=2**31 - 2, max_value=2**64),
    st.sampled_from([2**63, -(2**63) - 1, 10**30, 10**400, 2**31 - 1, 2**31, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 1e17, 5e-324, float("nan"), float("inf"), -float("inf")]),
)

#: Text with what breaks later uses: NUL, lone surrogates, traversal, devices, size.
text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.sampled_from(
        ["a\x00b.png", "\ud800.png", "\ufeff", "../../../../etc/passwd", "/dev/zero", "", " "]
    ),
    st.integers(1, 100_000).map(lambda n: "x" * n),
)

leaves = st.one_of(st.none(), st.booleans(), numbers, text)

#: JSON-like trees: what a sender can put in any field.
trees = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def nested(depth: int, inner: str = "1") -> str:
    """``inner`` inside ``depth`` arrays, as JSON text."""
    return "[" * depth + inner + "]" * depth


def dumps(obj: object) -> str:
    """JSON text of any tree; NaN and Infinity written as the tokens Python writes."""
    return json.dumps(obj, allow_nan=True)


#: Values put in a marker's or header's field.
field_values = st.one_of(
    trees,
    st.integers(0, 3000).map(lambda d: ("deep", d)),
)


def render_field(value: object) -> str:
    """A field value as JSON text (a ``("deep", n)`` pair: n levels of arrays)."""
    if isinstance(value, tuple) and value and value[0] == "deep":
        return nested(value[1])
    return dumps(value)


def object_text(fields: dict[str, object]) -> str:
    """A JSON object's text from field values (deep ones spelled out)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {render_field(v)}" for k, v in fields.items()) + "}"


def mutated_texts(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid texts cut short, with bytes flipped, or replaced by noise."""
    return st.one_of(
        st.tuples(valid, st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.tuples(valid, st.integers(0, 200), st.characters()).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
        ),
    )


def markers(events: tuple[str, ...] = ("stimulus_onset", "rating", "rating_onset")):
    """Marker texts: an object with a (maybe) good event and hostile fields, or worse."""
    good_event = st.sampled_from(events)
    shaped = st.fixed_dictionaries(
        {"event": st.one_of(good_event, field_values)},
        optional={
            "trial": st.one_of(numbers, field_values),
            "image": st.one_of(text, field_values),
            "block": field_values,
            "round": numbers,
            "valence": numbers,
            "arousal": numbers,
            "low": numbers,
            "high": numbers,
            "rt_ms": field_values,
            "x": field_values,
        },
    ).map(object_text)
    return st.one_of(shaped, shaped, trees.map(dumps), mutated_texts(shaped))
