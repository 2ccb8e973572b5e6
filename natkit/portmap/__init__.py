"""natkit.portmap: the port-mapping protocols a home gateway may offer, sans-IO.

NAT-PMP (RFC 6886) and PCP (RFC 6887) share UDP port 5351 and are told apart by their first byte
(version 0 and 2); UPnP-IGD is SSDP discovery (multicast 239.255.255.250:1900) plus SOAP calls
over HTTP. Each module turns requests into bytes and bytes into typed answers; sockets live in
`natkit.diag.portmap`.
"""

from natkit.portmap.natpmp import NatPmpError, NatPmpExternal, NatPmpMapping
from natkit.portmap.pcp import PcpError, PcpMapping, PcpResponse

__all__ = [
    "NatPmpError",
    "NatPmpExternal",
    "NatPmpMapping",
    "PcpError",
    "PcpMapping",
    "PcpResponse",
]
