"""Reading the JSON payloads of built-in jobs into messages, naming the field that is wrong.

A payload's event data can be a megabyte of JSON. Converting JSON between
protobuf's Struct and Python dicts costs over a second per megabyte of
small fields, in pure Python, so an event's custom data never takes that
path: `set_aside_custom_data` hands it over as a message, and only the
small remainder goes through json_format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from statekeeper_server.errors import InvalidArgument

M = TypeVar("M", bound=Message)


def string_field(fields: Mapping[str, struct_pb2.Value], name: str) -> str | None:
    """The text of JSON field `name`; None when it is absent or not a string."""
    if name not in fields or fields[name].WhichOneof("kind") != "string_value":
        return None
    return fields[name].string_value


def set_aside_custom_data(
    fields: Mapping[str, struct_pb2.Value], field: str
) -> tuple[object, struct_pb2.Struct | None]:
    """The payload's event as JSON without its custom data, and that data (a part of
    the payload) or None; InvalidArgument naming `field` if there is no event object.

    Only a `custom.data` object is set aside; anything else, right or wrong, stays
    in the JSON for json_format to parse or refuse as it would the whole event.
    """
    if "event" not in fields or fields["event"].WhichOneof("kind") != "struct_value":
        raise InvalidArgument(field, "is required (a AgentEvent in JSON form)")
    event = fields["event"].struct_value
    custom = object_field(event.fields, "custom")
    data = None if custom is None else object_field(custom.fields, "data")
    if custom is None or data is None:
        return json_format.MessageToDict(event), None
    rest = {
        key: json_format.MessageToDict(value)
        for key, value in event.fields.items()
        if key != "custom"
    }
    rest["custom"] = {
        key: json_format.MessageToDict(value)
        for key, value in custom.fields.items()
        if key != "data"
    }
    return rest, data


def object_field(fields: Mapping[str, struct_pb2.Value], name: str) -> struct_pb2.Struct | None:
    """JSON field `name` when it holds an object; None otherwise."""
    if name not in fields or fields[name].WhichOneof("kind") != "struct_value":
        return None
    return fields[name].struct_value


def json_message(value: object, message: M, field: str) -> M:
    """`message` with JSON `value` merged in; InvalidArgument naming `field` if it is
    not the message's JSON form."""
    if not isinstance(value, dict):
        raise InvalidArgument(field, f"is required (a {message.DESCRIPTOR.name} in JSON form)")
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise InvalidArgument(field, str(exc).splitlines()[0]) from None
