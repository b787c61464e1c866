"""The errors the service reports, and their mapping to gRPC statuses.

Stores and servicers raise a `ServiceError`; one interceptor turns it into a
gRPC status with a `google.rpc.ErrorInfo` (and a `google.rpc.BadRequest` for
INVALID_ARGUMENT), so callers in any language can read the reason and its
metadata with `rpc_status.from_call`.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from statekeeper_server.limits import MAX_ERROR_TEXT_LENGTH

ERROR_DOMAIN = "statekeeper.dev"
MAX_MESSAGE_LENGTH = 4 * MAX_ERROR_TEXT_LENGTH
"""An error message is cut to this many characters (it travels in a header)."""


def clip_text(text: str, max_length: int = MAX_ERROR_TEXT_LENGTH) -> str:
    """`text` cut to `max_length` characters, marked with an ellipsis when cut.

    Errors quote caller-supplied text (a key, an id, a field path); cutting it
    keeps every status within the header sizes every gRPC client accepts.
    """
    return text if len(text) <= max_length else text[: max_length - 1] + "\u2026"


class ServiceError(Exception):
    """A failure the caller can act on: a status code, a reason and facts.

    `reason` is an UPPER_SNAKE code stable across releases; `metadata` holds
    facts such as the current version (values are strings, as in ErrorInfo).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        message = clip_text(message, MAX_MESSAGE_LENGTH)
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {key: clip_text(str(value)) for key, value in metadata.items()}

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled whole (a worker process's refusal reaches the server this way): the
        # subclasses' constructors take other arguments than the message they store.
        return (_restored, (type(self), self.args, self.__dict__))

    def details(self) -> list[any_pb2.Any]:
        """The `google.rpc` detail messages sent with the status."""
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
            )
        )
        return [info]

    def to_status(self) -> grpc.Status:
        """This error as a rich gRPC status."""
        status = status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )
        return rpc_status.to_status(status)


def _restored(
    kind: type[ServiceError], args: tuple[object, ...], state: dict[str, object]
) -> ServiceError:
    """A pickled ServiceError, rebuilt without calling its constructor."""
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgument(ServiceError):
    """A request field is missing or malformed; names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str, reason: str = "INVALID_ARGUMENT") -> None:
        field, description = clip_text(field), clip_text(description, MAX_MESSAGE_LENGTH)
        super().__init__(reason, f"{field}: {description}", field=field)
        self.field = field
        self.description = description

    def details(self) -> list[any_pb2.Any]:
        """ErrorInfo plus a BadRequest naming the offending field."""
        return [*super().details(), bad_request(self.field, self.description)]


class NotFound(ServiceError):
    """The addressed record does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    """A record with the same identity but other content exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ServiceError):
    """A compare-and-set lost: version, seq or parent conflict."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ServiceError):
    """The record is not in a state that allows the call (a stale lease)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(ServiceError):
    """A position past what is kept, such as a truncated seq."""

    code = grpc.StatusCode.OUT_OF_RANGE


class ResourceExhausted(ServiceError):
    """The request is too large, or the server is at a limit (streams)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooLarge(ResourceExhausted):
    """A request, record or batch is larger than its limit; names the field.

    Carries ErrorInfo metadata `field`, `size_bytes` and `limit_bytes`, and
    a BadRequest naming the field, so a caller knows what to shrink.
    """

    def __init__(self, reason: str, field: str, size: int, limit: int, what: str) -> None:
        field = clip_text(field)
        super().__init__(
            reason,
            f"{field}: {what} is {size} bytes, larger than the limit of {limit} bytes",
            field=field,
            size_bytes=size,
            limit_bytes=limit,
        )
        self.field = field

    def details(self) -> list[any_pb2.Any]:
        """ErrorInfo plus a BadRequest naming the field that is too large."""
        return [*super().details(), bad_request(self.field, self.message)]


class Unavailable(ServiceError):
    """The store cannot be reached right now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(ServiceError):
    """A stored record cannot be decoded."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(ServiceError):
    """The caller did not prove who it is."""

    code = grpc.StatusCode.UNAUTHENTICATED


def bad_request(field: str, description: str) -> any_pb2.Any:
    """A packed `google.rpc.BadRequest` naming one field."""
    packed = any_pb2.Any()
    packed.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            ]
        )
    )
    return packed


def internal_status(message: str) -> grpc.Status:
    """The status of an unexpected server fault (never a caller mistake)."""
    return rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message=message))
