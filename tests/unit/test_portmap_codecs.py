"""NAT-PMP (RFC 6886), PCP (RFC 6887) and UPnP-IGD codecs: the RFCs' wire layouts, and answers
captured from miniupnpd 2.3.1 (Debian, nftables back end) in a lab router."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest

from natkit.portmap import natpmp, pcp, upnp

DATA = Path(__file__).parent.parent / "data" / "portmap"
CLIENT = ipaddress.IPv4Address("10.0.1.10")
WAN = ipaddress.IPv4Address("203.0.113.100")

# Captured from miniupnpd 2.3.1 in the upnp-symmetric lab preset (client 10.0.1.10).
NATPMP_EXTERNAL = bytes.fromhex("0080000000000001cb007164")
NATPMP_MAP_41000 = bytes.fromhex("0081000000000004a028a0280000003c")
PCP_ANNOUNCE = bytes.fromhex("02800000" + "00" * 20)
PCP_MAP_45000 = bytes.fromhex(
    "0281000000000078000000000000000000000000000000006e6e6e6e6e6e6e6e6e6e6e6e"
    "11000000afc8afc800000000000000000000ffffcb007164"
)
PCP_DELETE_45000 = bytes.fromhex(
    "0281000000000000000000000000000000000000000000006e6e6e6e6e6e6e6e6e6e6e6e"
    "11000000afc8000000000000000000000000ffffcb007164"
)


# -- NAT-PMP --------------------------------------------------------------------------------
def test_natpmp_external_address_request_is_version_0_opcode_0() -> None:
    assert natpmp.external_address_request() == b"\x00\x00"  # RFC 6886 §3.2


def test_natpmp_map_request_layout() -> None:
    # RFC 6886 §3.3: version, opcode (1 UDP), reserved, internal, suggested external, lifetime
    req = natpmp.map_request(41000, 60, external_port=41000)
    assert req == struct.pack("!BBHHHI", 0, 1, 0, 41000, 41000, 60)
    assert natpmp.map_request(22, 7200, protocol="tcp")[1] == 2
    # §3.4: a deletion has lifetime 0 and suggested external port 0
    assert natpmp.map_request(41000, 0) == struct.pack("!BBHHHI", 0, 1, 0, 41000, 0, 0)


def test_natpmp_answers_from_miniupnpd() -> None:
    ext = natpmp.parse_external_address(NATPMP_EXTERNAL)
    assert ext.ok and ext.address == WAN and ext.epoch == 1
    m = natpmp.parse_map(NATPMP_MAP_41000)
    assert m.ok and (m.internal_port, m.external_port, m.lifetime) == (41000, 41000, 60)


def test_natpmp_error_answers_and_garbage() -> None:
    refused = natpmp.parse_map(struct.pack("!BBHI", 0, 129, 2, 7))  # short error answer
    assert not refused.ok and natpmp.RESULTS[refused.result] == "not authorized/refused"
    with pytest.raises(natpmp.NatPmpError):
        natpmp.parse_external_address(PCP_ANNOUNCE)  # version 2 is PCP
    with pytest.raises(natpmp.NatPmpError):
        natpmp.parse_map(NATPMP_EXTERNAL)  # the answer to another opcode
    with pytest.raises(natpmp.NatPmpError):
        natpmp.parse_external_address(NATPMP_EXTERNAL[:8])  # success must carry the address


# -- PCP ------------------------------------------------------------------------------------
def test_pcp_announce_request_layout() -> None:
    req = pcp.announce_request(CLIENT)
    # RFC 6887 §7.1: version 2, R=0 opcode 0, reserved, lifetime 0, IPv4-mapped client address
    assert req == bytes([2, 0, 0, 0]) + bytes(4) + bytes(10) + b"\xff\xff" + CLIENT.packed
    assert len(req) == 24


def test_pcp_map_request_layout() -> None:
    req = pcp.map_request(CLIENT, b"n" * 12, 45000, 120, external_port=45000)
    assert len(req) == 60  # 24-byte header + 36-byte MAP body (§11.1)
    version, op, _, lifetime = struct.unpack_from("!BBHI", req)
    assert (version, op, lifetime) == (2, 1, 120)
    assert req[24:36] == b"n" * 12 and req[36] == 17  # nonce, protocol UDP
    assert struct.unpack_from("!HH", req, 40) == (45000, 45000)
    assert req[44:] == bytes(10) + b"\xff\xff" + bytes(4)  # "any" external address
    with pytest.raises(ValueError):
        pcp.map_request(CLIENT, b"short", 1, 1)


def test_pcp_answers_from_miniupnpd() -> None:
    announce = pcp.parse_response(PCP_ANNOUNCE, pcp.OP_ANNOUNCE)
    assert announce.ok and announce.mapping is None
    made = pcp.parse_response(PCP_MAP_45000, pcp.OP_MAP)
    assert made.ok and made.lifetime == 120 and made.mapping is not None
    assert made.mapping.nonce == b"n" * 12 and made.mapping.protocol == 17
    assert (made.mapping.internal_port, made.mapping.external_port) == (45000, 45000)
    assert made.mapping.external_address == WAN
    deleted = pcp.parse_response(PCP_DELETE_45000, pcp.OP_MAP)
    assert deleted.ok and deleted.lifetime == 0


def test_pcp_refuses_what_is_not_its_answer() -> None:
    with pytest.raises(pcp.PcpError, match="NAT-PMP only"):
        pcp.parse_response(struct.pack("!BBHI", 0, 128, 1, 0), pcp.OP_ANNOUNCE)  # §9
    with pytest.raises(pcp.PcpError, match="R bit"):
        pcp.parse_response(pcp.announce_request(CLIENT), pcp.OP_ANNOUNCE)
    with pytest.raises(pcp.PcpError, match="opcode"):
        pcp.parse_response(PCP_ANNOUNCE, pcp.OP_MAP)
    with pytest.raises(pcp.PcpError):
        pcp.parse_response(NATPMP_EXTERNAL, pcp.OP_ANNOUNCE)
    refused = pcp.parse_response(bytes([2, 0x81, 0, 2]) + bytes(20), pcp.OP_MAP)
    assert not refused.ok and refused.result_name == "NOT_AUTHORIZED"


# -- UPnP-IGD -------------------------------------------------------------------------------
def test_msearch_is_an_ssdp_discover_for_an_igd() -> None:
    text = upnp.msearch().decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\n") and text.endswith("\r\n\r\n")
    assert "HOST: 239.255.255.250:1900\r\n" in text and 'MAN: "ssdp:discover"' in text
    assert f"ST: {upnp.IGD}\r\n" in text


def test_ssdp_answer_from_miniupnpd() -> None:
    answer = upnp.parse_ssdp((DATA / "miniupnpd-ssdp-answer.txt").read_bytes())
    assert answer.st == upnp.IGD
    assert answer.location.startswith("http://10.0.1.1:") and "MiniUPnPd" in answer.server
    with pytest.raises(upnp.UpnpError):
        upnp.parse_ssdp(upnp.msearch())  # a request, not an answer


def test_wan_service_of_miniupnpds_description() -> None:
    desc = (DATA / "miniupnpd-rootDesc.xml").read_bytes()
    service, control = upnp.find_wan_service(desc, "http://10.0.1.1:40897/rootDesc.xml")
    assert service == "urn:schemas-upnp-org:service:WANIPConnection:2"
    assert control == "http://10.0.1.1:40897/ctl/IPConn"
    with pytest.raises(upnp.UpnpError):
        upnp.find_wan_service(b"<root/>", "http://10.0.1.1/")


def test_soap_request_and_answers_from_miniupnpd() -> None:
    body, action = upnp.soap_request(
        "urn:schemas-upnp-org:service:WANIPConnection:2", "GetExternalIPAddress", {}
    )
    assert action == '"urn:schemas-upnp-org:service:WANIPConnection:2#GetExternalIPAddress"'
    assert b"<u:GetExternalIPAddress " in body
    got = upnp.parse_soap((DATA / "miniupnpd-GetExternalIPAddress.xml").read_bytes())
    assert got == {"NewExternalIPAddress": "203.0.113.100"}
    with pytest.raises(upnp.UpnpError, match="718"):
        upnp.parse_soap((DATA / "miniupnpd-AddPortMapping-other-client.xml").read_bytes())
