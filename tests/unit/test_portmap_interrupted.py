"""A Ctrl-C that lands while a mapping request is out: the gateway made the mapping on receipt,
so `Mapper.make` waits for its answer and deletes it (the race a lab test found: miniupnpd's
rule was in place, the client had not read the answer yet, and nothing deleted it).

The gateway is a NAT-PMP responder on a loopback address (a real UDP socket), which holds its
answer to the first mapping request until the client has been cancelled."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from natkit.diag.portmap import Mapper, PortMappingProbe
from natkit.portmap import natpmp

GATEWAY = "127.0.0.53"  # any 127/8 address is loopback: port 5351 there is ours alone


class SlowGateway:
    """Answers NAT-PMP UDP map requests; the first one only once `release` is set."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((GATEWAY, natpmp.PORT))
        self.sock.settimeout(0.05)
        self.lifetimes: list[int] = []  # of each request received, retransmissions too
        self.received = threading.Event()
        self.release = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, source = self.sock.recvfrom(64)
            except TimeoutError:
                continue
            _, op, _, port, external, lifetime = struct.unpack("!BBHHHI", data[:12])
            self.lifetimes.append(lifetime)
            self.received.set()
            if lifetime and not self.release.is_set():
                continue  # mapped on receipt; the answer waits (the client retransmits)
            answer = struct.pack("!BBHIHHI", 0, 128 + op, 0, 1, port, external or port, lifetime)
            self.sock.sendto(answer, source)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def gateway() -> Iterator[SlowGateway]:
    served = SlowGateway()
    yield served
    served.close()


def _mapper() -> Mapper:
    probe = PortMappingProbe(
        gateway=GATEWAY, local="127.0.0.1", natpmp=True, external_address="198.51.100.7"
    )
    return Mapper(probe, "natpmp", 40000)


def test_a_cancel_mid_request_deletes_what_the_gateway_made(gateway: SlowGateway) -> None:
    async def interrupted() -> None:
        task = asyncio.create_task(_mapper().make(120, 2.0))
        await asyncio.to_thread(gateway.received.wait, 5.0)
        task.cancel()  # as asyncio.run does on Ctrl-C
        threading.Timer(0.3, gateway.release.set).start()  # the answer comes after the cancel
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    assert gateway.lifetimes[0] == 120 and gateway.lifetimes[-1] == 0  # made, then deleted


def test_an_uninterrupted_request_is_left_to_its_caller(gateway: SlowGateway) -> None:
    gateway.release.set()
    external, granted = asyncio.run(_mapper().make(120, 2.0))
    assert (str(external), granted) == ("198.51.100.7:40000", 120)
    assert 0 not in gateway.lifetimes  # deleting is the caller's, when it is done with it
