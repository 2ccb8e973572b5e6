"""UPnP-IGD, sans-IO: the SSDP M-SEARCH (UPnP Device Architecture 1.1 §1.3.2), the device
description's WAN connection service, and the SOAP calls a port mapping needs.

Discovery is one multicast datagram to 239.255.255.250:1900; an Internet Gateway Device answers
with a unicast HTTP-like response whose LOCATION names its description. The description lists
a WANIPConnection (or WANPPPConnection) service and its control URL, to which AddPortMapping,
DeletePortMapping and GetExternalIPAddress are POSTed as SOAP envelopes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urljoin

__all__ = [
    "IGD",
    "SSDP_ADDRESS",
    "SsdpAnswer",
    "UpnpError",
    "find_wan_service",
    "msearch",
    "parse_soap",
    "parse_ssdp",
    "soap_request",
]

SSDP_ADDRESS = ("239.255.255.250", 1900)
IGD = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
_WAN_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
_HEADER = re.compile(r"^([A-Za-z0-9-]+):\s*(.*?)\s*$")


class UpnpError(ValueError):
    """A malformed or unexpected UPnP answer, or a SOAP fault (message has its code)."""


@dataclass(frozen=True, slots=True)
class SsdpAnswer:
    st: str
    location: str
    server: str


def msearch(st: str = IGD, mx: int = 1) -> bytes:
    """The M-SEARCH datagram; MX is how long (s) devices may wait before answering."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDRESS[0]}:{SSDP_ADDRESS[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {st}\r\n\r\n"
    ).encode("ascii")


def parse_ssdp(data: bytes) -> SsdpAnswer:
    """A search response: "HTTP/1.1 200 OK" with ST and LOCATION headers."""
    text = data.decode("utf-8", "replace")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    if not lines or not lines[0].startswith("HTTP/1.") or " 200 " not in lines[0] + " ":
        raise UpnpError(f"not an SSDP search response: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if m := _HEADER.match(line):
            headers[m.group(1).upper()] = m.group(2)
    if "LOCATION" not in headers:
        raise UpnpError("SSDP response without LOCATION")
    return SsdpAnswer(headers.get("ST", ""), headers["LOCATION"], headers.get("SERVER", ""))


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def find_wan_service(description: bytes, location: str) -> tuple[str, str]:
    """(service type, absolute control URL) of the device's WAN connection service."""
    try:
        root = ET.fromstring(description)
    except ET.ParseError as err:
        raise UpnpError(f"device description is not XML: {err}") from None
    found: dict[str, str] = {}
    base = location
    for el in root.iter():
        if _local(el.tag) == "URLBase" and el.text:
            base = el.text.strip()
        if _local(el.tag) != "service":
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in el}
        if fields.get("serviceType") in _WAN_SERVICES and fields.get("controlURL"):
            found.setdefault(fields["serviceType"], fields["controlURL"])
    for service in _WAN_SERVICES:
        if service in found:
            return service, urljoin(base, found[service])
    raise UpnpError("the device offers no WANIPConnection/WANPPPConnection service")


def soap_request(service: str, action: str, args: dict[str, str | int]) -> tuple[bytes, str]:
    """(body, SOAPAction header value) for `action` with `args` in order."""
    params = "".join(f"<{k}>{v}</{k}>" for k, v in args.items())
    body = (
        '<?xml version="1.0"?>\r\n'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service}">{params}</u:{action}></s:Body></s:Envelope>'
    )
    return body.encode("utf-8"), f'"{service}#{action}"'


def parse_soap(data: bytes) -> dict[str, str]:
    """The out-arguments of a SOAP response; UpnpError carrying the UPnP error for a fault."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise UpnpError(f"SOAP answer is not XML: {err}") from None
    values = {_local(el.tag): (el.text or "").strip() for el in root.iter()}
    if "Fault" in values or "errorCode" in values:
        code = values.get("errorCode", "?")
        raise UpnpError(f"UPnP error {code}: {values.get('errorDescription', 'fault')}")
    body = next((el for el in root.iter() if _local(el.tag) == "Body"), None)
    if body is None or not len(body):
        raise UpnpError("SOAP answer without a body")
    return {_local(c.tag): (c.text or "").strip() for c in body[0]}
