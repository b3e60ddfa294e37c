"""Reading an ARI event's type off its text, so that events nobody handles are never decoded."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from dialguard.ari.listener import top_level_type


def test_the_type_is_read_wherever_the_top_level_puts_it() -> None:
    # Asterisk 22 writes ChannelVarset with its variable and value ahead of the type.
    varset = '{"variable":"STASISSTATUS","value":"","type":"ChannelVarset","timestamp":"x"}'
    assert top_level_type(varset) == "ChannelVarset"
    assert top_level_type('{"type": "StasisStart", "args": []}') == "StasisStart"
    assert top_level_type(' {\n  "type" : "Dial"\n}') == "Dial"
    quoted = '{"value": "say \\"type\\": \\"StasisStart\\"", "type": "ChannelVarset"}'
    assert top_level_type(quoted) == "ChannelVarset"


def test_a_type_it_cannot_be_sure_of_is_left_to_the_decoder() -> None:
    nested_first = '{"userevent": {"type": "StasisStart"}, "type": "ChannelUserevent"}'
    assert top_level_type(nested_first) is None
    assert top_level_type('[{"type": "StasisStart"}]') is None
    assert top_level_type('{"type": 7}') is None
    assert top_level_type("{not json") is None


_text = st.text(alphabet=st.sampled_from('ab"\\{}[]:, type'), max_size=12)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), _text)
_json = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(_text, st.just("type")), children, max_size=3),
    ),
    max_leaves=8,
)


@given(
    before=st.dictionaries(_text, _json, max_size=3),
    after=st.dictionaries(_text, _json, max_size=3),
    event_type=st.sampled_from(["StasisStart", "ChannelVarset", "Dial"]),
)
def test_the_peek_never_names_a_type_the_event_does_not_have(
    before: dict[str, Any], after: dict[str, Any], event_type: str
) -> None:
    event = {**before, "type": event_type, **after}
    for text in (json.dumps(event), orjson.dumps(event).decode()):
        assert top_level_type(text) in (None, event["type"])
