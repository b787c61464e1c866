"""Fields built by concatenation are exactly the bytes protobuf's own encoder writes."""

from __future__ import annotations

from statekeeper.v1 import checkpoints_pb2, jobs_pb2, snapshots_pb2
from statekeeper_server import wire


def test_a_message_field_wraps_the_encoding_it_is_given() -> None:
    snapshot = snapshots_pb2.Snapshot(run_id="run-1", session_id="s", version=3)
    built = wire.message_field(1, snapshot.SerializeToString())
    assert built == snapshots_pb2.LoadSnapshotResponse(snapshot=snapshot).SerializeToString()


def test_an_empty_message_field_is_still_present() -> None:
    built = wire.message_field(1, b"")
    decoded = snapshots_pb2.LoadSnapshotResponse.FromString(built)
    assert decoded.HasField("snapshot")
    assert (
        built
        == snapshots_pb2.LoadSnapshotResponse(snapshot=snapshots_pb2.Snapshot()).SerializeToString()
    )


def test_repeated_messages_and_text_match_protobuf_for_a_listing_page() -> None:
    snapshots = [snapshots_pb2.Snapshot(run_id=f"run-{n}", iteration=n) for n in range(3)]
    built = wire.repeated_message_field(
        1, [snapshot.SerializeToString() for snapshot in snapshots]
    ) + wire.string_field(2, "next-é")
    expected = snapshots_pb2.ListSnapshotsResponse(snapshots=snapshots, next_page_token="next-é")
    assert built == expected.SerializeToString()


def test_empty_text_and_zero_numbers_are_left_out_as_protobuf_does() -> None:
    assert wire.string_field(2, "") == b""
    assert wire.uint_field(2, 0) == b""
    assert wire.packed_bool_field(2, []) == b""
    assert wire.repeated_string_field(2, []) == b""


def test_numbers_and_repeated_strings_match_protobuf() -> None:
    for count in (1, 127, 128, 300, 2**31 - 1):
        built = wire.uint_field(2, count)
        assert (
            built
            == checkpoints_pb2.SaveWorkflowCheckpointResponse(
                dropped_count=count
            ).SerializeToString()
        )
    ids = ["a", "", "c" * 200]
    assert (
        wire.repeated_string_field(2, ids)
        == checkpoints_pb2.LoadWorkflowCheckpointResponse(
            skipped_checkpoint_ids=ids
        ).SerializeToString()
    )


def test_packed_bools_match_protobuf() -> None:
    created = [True, False, True, True]
    built = wire.packed_bool_field(2, created)
    assert built == jobs_pb2.EnqueueJobsResponse(created=created).SerializeToString()


def test_varints_cover_every_length() -> None:
    for value in (0, 1, 127, 128, 16_383, 16_384, 2**35, 2**63 - 1):
        encoded = wire.varint(value)
        decoded, shift = 0, 0
        for byte in encoded:
            decoded |= (byte & 0x7F) << shift
            shift += 7
        assert decoded == value
        assert all(byte & 0x80 for byte in encoded[:-1])
        assert not encoded[-1] & 0x80
