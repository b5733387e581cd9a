"""Who a peer is, for per-peer limits: one host, however it connects."""

from __future__ import annotations

import ipaddress


def host_block(host: str) -> str:
    """The block of addresses one host holds, as a key for per-peer limits.

    An IPv4 address is itself. An IPv6 address is its /64, the block one host
    is usually given: counted by its full address, a host would pass any
    limit by changing its last 64 bits. An IPv4 client of a dual-stack server
    (``::ffff:192.0.2.7``) is its IPv4 address. Anything that is not an IP
    address (a Unix socket's path) is itself.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
