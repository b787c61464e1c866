"""Who may see the console when no access control is configured."""

from __future__ import annotations

import ipaddress


def is_loopback(remote: str | None) -> bool:
    """True only when `remote` is a loopback IP address (127.0.0.0/8, ::1, or
    an IPv4-mapped loopback); anything unparsable is not loopback."""
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
