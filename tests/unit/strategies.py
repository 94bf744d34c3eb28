"""Hypothesis strategies for Apizee payloads, built from the catalog's attribute types."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from bridge.catalog import ATTRIBUTES, EVENTS, INT32_MAX, INT32_MIN, INT64_MAX

# JSON strings: no lone surrogates (they cannot be encoded as UTF-8 at all).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ids = st.integers(min_value=0, max_value=INT64_MAX)
int32 = st.integers(min_value=INT32_MIN, max_value=INT32_MAX)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


def _optional_keys(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=fields)


person = _optional_keys({k: st.none() | text for k in ("email", "phone", "firstname", "lastname")})
geoloc = st.fixed_dictionaries(
    {
        "lat": st.floats(min_value=-90, max_value=90) | st.integers(-90, 90),
        "lng": st.floats(min_value=-180, max_value=180),
    }
)
survey_answer = _optional_keys(
    {
        "questions": st.lists(
            st.fixed_dictionaries(
                {"id": ids},
                optional={
                    "label": st.dictionaries(st.sampled_from(["fr", "en", "de"]), text),
                    "answer": st.none() | text,
                },
            ),
            max_size=4,
        ),
        "feedback": st.none() | text,
    }
)

ATTRIBUTE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "agent": person,
    "requestor": person,
    "geoloc": geoloc,
    "mediaId": ids,
    "text": text,
    "oldPriority": int32,
    "newPriority": int32,
    "surveyAnswer": survey_answer,
}
assert set(ATTRIBUTE_VALUES) == set(ATTRIBUTES)

COMMON_PROPS = frozenset({"eventType", "eventCode", "conversationId", "ticketId"})


# Names sure to be attributes the event type does not know: never a common field or one
# of its own attributes, often the attribute of another type (as in the seed's REST example).
def unknown_keys(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    # The reserved key of `extra` and names like it too: none may overwrite another.
    reserved = st.sampled_from(["_envelope", "__envelope", "_", "__x"])
    names = st.sampled_from(sorted(ATTRIBUTES)) | reserved | text
    return names.filter(lambda k: k not in COMMON_PROPS and k not in known)


@st.composite
def attributes_of(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    spec = EVENTS[event_type]
    known = draw(_optional_keys({a: ATTRIBUTE_VALUES[a] for a in spec.attributes}))
    unknown = draw(st.dictionaries(unknown_keys(spec.attributes), json_values, max_size=3))
    return {**known, **unknown}


ENVELOPE_FIELDS = frozenset({"event", "time", "object", "objectId", "props"})


@st.composite
def webhook_bodies(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(sorted(EVENTS)))
    # Unknown envelope fields, sometimes named like attributes or the reserved key.
    names = st.sampled_from(["_envelope", "agent", "deliveryId"]) | text
    envelope_extra = draw(
        st.dictionaries(names.filter(lambda k: k not in ENVELOPE_FIELDS), json_values, max_size=2)
    )
    return {
        **envelope_extra,
        "event": "create",
        "time": draw(st.integers(0, 4_102_444_800) | st.floats(0, 4_102_444_800)),
        "object": "conversationevent",
        "objectId": draw(ids),
        "props": {
            "eventType": event_type,
            **draw(_optional_keys({"eventCode": st.none() | int32})),
            "conversationId": draw(ids),
            "ticketId": draw(ids),
            **draw(attributes_of(event_type)),
        },
    }


@st.composite
def rest_items(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(sorted(EVENTS)))
    return {
        "id": draw(ids),
        "eventType": event_type,
        "timestamp": draw(st.integers(0, 4_102_444_800)),
        "conversationId": draw(ids),
        "data": draw(attributes_of(event_type)),
    }
