"""Every size limit of statekeeper, defined once.

Requests, stored records, pages, batches and stream messages are bounded in
bytes as well as in counts. The numbers fit together so that whatever is
accepted can always be answered:

- every response and stream message stays within RESPONSE_BUDGET_BYTES,
  under the 4 MiB that a standard gRPC client accepts by default;
- a single stored record (a snapshot, a checkpoint, an event envelope, a
  job with its payload, result and errors) is always smaller than that, so
  a page or a batch can always hold at least one; pages, lease batches and
  stream messages hold fewer records when records are large, never fail;
- every Struct (JSON) value nests at most MAX_JSON_DEPTH levels, so any
  protobuf client with the default recursion limit (100) decodes every
  message that carries one, however deep inside the message it sits; and
  none of its objects holds more than MAX_JSON_OBJECT_KEYS keys, so that
  decoding the largest request holds up other callers only briefly;
- a write is checked against these limits before the store is touched: too
  large is refused and nothing is stored.

The README's "Limits" section and the protos document the same numbers.
"""

from __future__ import annotations

KIB = 1024
MIB = 1024 * KIB

CLIENT_RECEIVE_LIMIT_BYTES = 4 * MIB
"""The largest message a standard gRPC client accepts unless configured otherwise."""
RESPONSE_BUDGET_BYTES = CLIENT_RECEIVE_LIMIT_BYTES - 64 * KIB
"""No response or stream message is larger than this (the rest is room for framing)."""
PAGE_BUDGET_BYTES = RESPONSE_BUDGET_BYTES
"""Most bytes of records in one page, lease batch or batch of job changes."""

DEFAULT_MAX_REQUEST_BYTES = 4 * MIB
"""Default of `--max-message-bytes`: the largest request accepted."""
MAX_REQUEST_BYTES_LIMIT = 64 * MIB
"""The highest `--max-message-bytes` an operator may set."""
DEFAULT_LARGE_REQUEST_BYTES = 6 * MIB
"""Default of `--large-request-bytes`: bodies of large requests served at once
(`request_turns`): one or two of the largest, three of 2 MB."""
TRANSPORT_SLACK_BYTES = 1 * MIB
"""gRPC itself refuses requests only this far above `--max-message-bytes`; requests in
between reach the server and are refused with an ErrorInfo (REQUEST_TOO_LARGE)."""

MAX_RECORD_BYTES = 2 * MIB
"""Largest snapshot, checkpoint or event envelope, encoded as stored and returned."""
MAX_JOB_PAYLOAD_BYTES = 1 * MIB
"""Largest encoded payload of a job."""
MAX_JOB_RESULT_BYTES = 1 * MIB
"""Largest encoded result a worker completes a job with."""
MAX_JOB_ERROR_BYTES = 4 * KIB
"""A failed attempt's error message is cut to this many bytes of UTF-8."""
MAX_METADATA_BYTES = 64 * KIB
"""Largest encoded `metadata` of a workflow checkpoint (it is also kept as JSON for filters)."""
MAX_FILTER_KEYS = 32
"""Most keys in a `metadata_filter`."""
MAX_JSON_DEPTH = 20
"""Deepest nesting of objects and lists in any Struct value: `{"a": 1}` is 1 deep,
`{"a": [1]}` 2. Deeper values are INVALID_ARGUMENT."""
MAX_JSON_OBJECT_KEYS = 5_000
"""Most keys of any one object in a Struct (JSON) value, counting every entry as sent.
protobuf decodes a large map slower per key the larger it is (95,000 keys of one object:
about 100 ms, holding the GIL; the same bytes in objects of 5,000 keys: about 20 ms), so
wider objects are INVALID_ARGUMENT. Lists and the number of objects are not limited
(but by the request's bytes)."""

MAX_PAGE_TOKEN_LENGTH = 512
"""Longest page token accepted (the server's own are far shorter)."""

STREAM_SHARE_BYTES = 16 * KIB
"""Bytes of data read but not yet sent that every live ReplayEvents or WatchJobs stream may
always hold; what it reads beyond that it borrows from the server's stream buffer budget."""
DEFAULT_STREAM_BUFFER_BYTES = 8 * MIB
"""Default of `--stream-buffer-bytes`: the budget all streams borrow from together, taking
only what is free (never waiting) and giving it back once it is sent. N streams whose
clients stopped reading hold at most N x STREAM_SHARE_BYTES plus this (plus a record
larger than that, which is always read alone)."""
REPLAY_READ_BYTES = 1 * MIB
"""Most bytes of envelopes a replay reads from the store per step, as far as its share and
the stream buffer budget allow (at least one envelope)."""
REPLAY_READ_EVENTS = 500
"""Most envelopes a replay reads from the store per step."""
REPLAY_MESSAGE_BYTES = 256 * KIB
"""A replay message holds envelopes up to this many bytes (a larger envelope goes alone)."""
WATCH_BATCH_BYTES = 1 * MIB
"""Most bytes of changes in one WatchJobs batch, as far as the stream's share and the stream
buffer budget allow (at least one change)."""

MAX_ERROR_TEXT_LENGTH = 256
"""Caller-supplied text quoted in an error message or its metadata is cut to this length."""

INLINE_CHECK_BYTES = 16 * KIB
"""Inputs up to this size are worked on at once, on the event loop; larger ones off it:
Python work (converting JSON, checking a request without JSON values) on a worker thread,
and a request holding JSON values screened, decoded and checked in a worker process
(protobuf holds the GIL whatever thread runs it), then decoded again on the event loop in
steps of about a millisecond, other calls served in between."""

INLINE_BATCH_ITEMS = 16
"""Items of a batch (the inputs of an append) worked on at once, on the event loop; the
work on more runs on a worker thread."""

# -- thread checkpoints ----------------------------------------------------------------

MAX_THREAD_BLOB_BYTES = 2 * MIB
"""Largest typed blob of a thread checkpoint: a checkpoint, its metadata, a channel value
or a pending write."""
MAX_THREAD_STATE_BYTES = 2 * MIB
"""Most bytes of one thread checkpoint's state: its checkpoint and metadata blobs, the
filterable metadata, and the channel values (with their names and versions) it names."""
MAX_THREAD_WRITES_BYTES = 1 * MIB
"""Most bytes of the pending writes stored against one thread checkpoint. State plus writes
stay below RESPONSE_BUDGET_BYTES, so one checkpoint always fits in a response."""
THREAD_ENTRY_OVERHEAD_BYTES = 16
"""Bytes counted per channel value or pending write beyond its names and data (their
framing in a response)."""
THREAD_PAGE_BYTES = PAGE_BUDGET_BYTES
"""Most bytes of checkpoints in one ListThreadCheckpoints page (at least one checkpoint)."""
MAX_THREAD_PAGE_TOKEN_LENGTH = 12 * KIB
"""Longest ListThreadCheckpoints page token: it carries a thread, an id and a checkpoint
namespace of up to 1024 characters (each up to 6 bytes as JSON), in base64."""
MAX_THREAD_IDS_PER_CALL = 1000
"""Most thread ids or run ids one DeleteThreadRuns or PruneThreads call names."""
