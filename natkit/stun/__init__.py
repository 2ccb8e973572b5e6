"""natkit.stun: the one STUN codec (sans-IO) and the Binding handler.

Bytes in, messages out, and back: `parse_message` / `Message.encode`, attribute value types,
integrity and fingerprint helpers, TURN ChannelData framing, and `BindingHandler`, which turns a
request plus its 5-tuple into a `Transmit` (response bytes, destination, local source address).
"""

from natkit.stun.attributes import (
    AddressErrorCode,
    AttrValue,
    ChangeRequest,
    ErrorCode,
    Icmp,
    PasswordAlgorithm,
)
from natkit.stun.binding import BindingHandler, Request, Transmit, response_port_allowed
from natkit.stun.constants import (
    ATTRIBUTE_NAMES,
    MAGIC_COOKIE,
    AttrType,
    ErrorCodeValue,
    MessageClass,
    Method,
    PasswordAlgorithmId,
)
from natkit.stun.errors import StunDecodeError, StunEncodeError, StunError
from natkit.stun.framing import (
    ChannelData,
    build_channel_data,
    parse_channel_data,
)
from natkit.stun.integrity import (
    check_fingerprint,
    check_integrity,
    check_integrity_sha256,
    long_term_key,
    saslprep,
    short_term_key,
    userhash,
)
from natkit.stun.message import Message, parse_message

__all__ = [
    "ATTRIBUTE_NAMES",
    "MAGIC_COOKIE",
    "AddressErrorCode",
    "AttrType",
    "AttrValue",
    "BindingHandler",
    "ChangeRequest",
    "ChannelData",
    "ErrorCode",
    "ErrorCodeValue",
    "Icmp",
    "Message",
    "MessageClass",
    "Method",
    "PasswordAlgorithm",
    "PasswordAlgorithmId",
    "Request",
    "StunDecodeError",
    "StunEncodeError",
    "StunError",
    "Transmit",
    "build_channel_data",
    "check_fingerprint",
    "check_integrity",
    "check_integrity_sha256",
    "long_term_key",
    "parse_channel_data",
    "parse_message",
    "response_port_allowed",
    "saslprep",
    "short_term_key",
    "userhash",
]
