"""Open client connections are counted from the kernel's TCP tables."""

from __future__ import annotations

from pathlib import Path

from statekeeper_server.observability.connections import established_connections

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def table(tmp_path: Path, *rows: tuple[str, str, str]) -> Path:
    path = tmp_path / "tcp"
    lines = [
        f"{index:4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 0\n"
        for index, (local, remote, state) in enumerate(rows)
    ]
    path.write_text(HEADER + "".join(lines))
    return path


def test_only_established_sockets_on_the_port_count(tmp_path: Path) -> None:
    port = 50051  # C383 in hex
    path = table(
        tmp_path,
        ("00000000:C383", "00000000:0000", "0A"),  # the listening socket
        ("0100007F:C383", "0100007F:9C40", "01"),  # a client connection
        ("0100007F:C383", "0100007F:9C41", "01"),  # another
        ("0100007F:C383", "0100007F:9C42", "06"),  # one closing (TIME_WAIT)
        ("0100007F:9C43", "0100007F:C383", "01"),  # the client's end of a connection
        ("0100007F:1F90", "0100007F:9C44", "01"),  # another port
    )
    assert established_connections(port, [path]) == 2


def test_the_count_is_unknown_where_no_table_can_be_read(tmp_path: Path) -> None:
    assert established_connections(50051, [tmp_path / "absent"]) is None


def test_the_count_is_unknown_before_the_port_is_bound(tmp_path: Path) -> None:
    assert established_connections(0, [table(tmp_path)]) is None
