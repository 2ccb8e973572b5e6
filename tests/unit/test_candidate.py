"""One ICE candidate class (natkit.addr.Candidate) for diagnose and p2p; their JSON is unchanged."""

from __future__ import annotations

import aioice

from natkit.addr import Candidate
from natkit.diag.gather import GatherResult
from natkit.p2p.report import P2PResult, to_json


def _srflx() -> aioice.Candidate:
    # aioice is the ICE agent both commands run; its parser is what a browser's SDP goes through.
    return aioice.Candidate.from_sdp(
        "842163049 1 UDP 1694498815 203.0.113.9 50001 typ srflx raddr 192.168.1.20 rport 50000"
    )


def test_from_aioice_keeps_every_field_and_lowercases_the_transport() -> None:
    c = Candidate.from_aioice(_srflx())
    assert c == Candidate(
        "srflx", "udp", "203.0.113.9", 50001, 1694498815, "842163049", "192.168.1.20", 50000
    )
    assert str(c) == "srflx udp 203.0.113.9:50001"
    assert str(Candidate("host", "udp", "::1", 9)) == "host udp [::1]:9"


def test_diagnose_json_lists_all_eight_fields() -> None:
    report = GatherResult(candidates=[Candidate.from_aioice(_srflx())]).to_dict()
    assert report["candidates"] == [
        {
            "type": "srflx",
            "protocol": "udp",
            "address": "203.0.113.9",
            "port": 50001,
            "priority": 1694498815,
            "foundation": "842163049",
            "related_address": "192.168.1.20",
            "related_port": 50000,
        }
    ]


def test_p2p_json_lists_the_four_contract_fields() -> None:
    c = Candidate.from_aioice(_srflx())
    host = Candidate("host", "udp", "127.0.0.1", 40000, 2130706431, "1")
    result = P2PResult(role="offer", selected=(c, host), tried_pairs=[(c, host, "succeeded")])
    result.local_candidates = [c]
    out = to_json(result)
    brief = {"type": "srflx", "protocol": "udp", "address": "203.0.113.9", "port": 50001}
    assert out["candidates"]["local"] == [brief]
    assert out["selected"]["local"] == brief
    assert out["selected"]["kind"] == "srflx"
    assert out["tried_pairs"][0]["remote"] == {
        "type": "host",
        "protocol": "udp",
        "address": "127.0.0.1",
        "port": 40000,
    }
