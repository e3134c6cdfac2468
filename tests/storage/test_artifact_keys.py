"""Properties of canonical_json / artifact_key: distinct configs give distinct keys, equal ones equal keys."""

import json
import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from storage.artifacts import artifact_key, canonical_json

finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=8))
configs = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(x=finite, y=finite)
def test_distinct_floats_give_distinct_keys(x, y):
    assume(x != y)
    assert artifact_key("train", {"lr": x}) != artifact_key("train", {"lr": y})


@settings(max_examples=300, deadline=None)
@given(x=finite.filter(lambda v: v != 0 and math.isfinite(math.nextafter(v, math.inf))))
def test_neighbouring_floats_give_distinct_keys(x):
    """One ulp apart (no rounding to a few significant digits anywhere on the way)."""
    y = math.nextafter(x, math.inf)
    assert canonical_json(x) != canonical_json(y)
    assert artifact_key("train", {"lr": x}) != artifact_key("train", {"lr": y})
    assert float(canonical_json(x)) == x  # the JSON form reads back exactly


@settings(max_examples=200, deadline=None)
@given(config=configs)
def test_equal_configs_give_equal_keys(config):
    copy = json.loads(json.dumps(config))  # an equal, separately built value
    assert artifact_key("train", config) == artifact_key("train", copy)


@settings(max_examples=200, deadline=None)
@given(d=st.dictionaries(st.text(max_size=6), scalars, min_size=2, max_size=8), seed=st.randoms())
def test_dict_order_is_irrelevant(d, seed):
    items = list(d.items())
    seed.shuffle(items)
    shuffled = dict(items)
    assert canonical_json(d) == canonical_json(shuffled)
    assert artifact_key("train", {"c": d}, inputs=d) == artifact_key("train", {"c": shuffled}, inputs=shuffled)


@settings(max_examples=200, deadline=None)
@given(a=configs, b=configs)
def test_different_configs_give_different_keys(a, b):
    """Different values (as JSON sees them) give different keys; the same JSON gives the same key."""
    assert (artifact_key("train", a) == artifact_key("train", b)) == (canonical_json(a) == canonical_json(b))
    assume(canonical_json(a) != canonical_json(b))
    assert artifact_key("train", {"x": a}) != artifact_key("train", {"x": b})
