"""The envelope survives the wire, and the event catalog is a valid contract for consumers."""

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from chassis.events import (
    CATALOG,
    Envelope,
    EventData,
    catalog_schema,
    event_type,
    new_event,
    parse_data,
)

PRODUCER = "chassis-events-tests"


class Place(BaseModel):
    city: str
    country: str


@event_type("test.member-joined", version=2, producer=PRODUCER)
class MemberJoined(EventData):
    member: str
    invited_by: str | None = None
    places: list[Place] = []


@event_type("test.member-left", producer=PRODUCER)
class MemberLeft(EventData):
    member: str
    reason: str


EXAMPLES = [
    MemberJoined(member="u-1", places=[Place(city="Lyon", country="FR")]),
    MemberJoined(member="u-2", invited_by="u-1"),
    MemberLeft(member="u-1", reason="moved"),
]


def _event(data: EventData) -> Envelope:
    return new_event(data, producer=PRODUCER, subject=f"member:{data.member}", actor="u-1")


def test_an_envelope_round_trips_through_json():
    envelope = _event(EXAMPLES[0])
    again = Envelope.model_validate_json(envelope.model_dump_json())
    assert again == envelope
    assert again.occurred_at.tzinfo is not None
    assert parse_data(again, MemberJoined) == EXAMPLES[0]


def test_new_event_stamps_type_version_and_a_unique_sortable_id():
    first, second = _event(EXAMPLES[1]), _event(EXAMPLES[2])
    assert (first.type, first.version) == ("test.member-joined", 2)
    assert (second.type, second.version) == ("test.member-left", 1)
    assert len(first.id) == 26 and first.id < second.id


def test_data_with_an_unknown_field_is_refused():
    envelope = _event(EXAMPLES[2]).model_copy(update={"data": {"member": "u", "reason": "r",
                                                               "extra": 1}})
    with pytest.raises(ValidationError):
        parse_data(envelope, MemberLeft)


def test_a_type_name_cannot_be_registered_for_two_models():
    with pytest.raises(ValueError, match="registered twice"):
        event_type("test.member-left", producer=PRODUCER)(MemberJoined)
    assert CATALOG["test.member-left"][1] is MemberLeft


def test_the_catalog_is_a_valid_draft_2020_12_schema():
    catalog = catalog_schema()
    Draft202012Validator.check_schema(catalog)
    Draft202012Validator.check_schema(catalog["envelope"])
    Draft202012Validator.check_schema(catalog["message"])
    for schema in catalog["events"].values():
        Draft202012Validator.check_schema(schema)


def test_the_catalog_can_be_narrowed_to_one_producer():
    events = catalog_schema(PRODUCER)["events"]
    assert sorted(events) == ["test.member-joined", "test.member-left"]
    assert events["test.member-joined"]["x-event-version"] == 2
    assert events["test.member-joined"]["x-producer"] == PRODUCER


def test_a_message_is_one_envelope_or_a_batch_of_them():
    message = Draft202012Validator(catalog_schema()["message"])
    envelopes = [_event(example).model_dump(mode="json") for example in EXAMPLES]
    assert message.is_valid(envelopes[0])
    assert message.is_valid(envelopes)
    assert not message.is_valid([])
    assert not message.is_valid([envelopes[0], {"hello": "world"}])


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: type(e).__name__)
def test_each_example_event_satisfies_the_published_catalog(example):
    catalog = catalog_schema(PRODUCER)
    envelope = _event(example).model_dump(mode="json")
    assert list(Draft202012Validator(catalog["envelope"]).iter_errors(envelope)) == []
    data_schema = Draft202012Validator(catalog["events"][envelope["type"]])
    assert list(data_schema.iter_errors(envelope["data"])) == []


def test_the_catalog_refuses_data_a_consumer_could_not_read():
    schema = Draft202012Validator(catalog_schema(PRODUCER)["events"]["test.member-left"])
    assert not schema.is_valid({"member": "u-1"})
    assert not schema.is_valid({"member": "u-1", "reason": "r", "surprise": True})
