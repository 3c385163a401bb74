"""`--ice-server` URLs: the forms accepted, the errors, and what the peers and the page are given."""

from __future__ import annotations

import pytest

from server.cli import build_parser
from server.commands import config_from_args
from server.webrtc.ice import IceServerError, parse_ice_server, parse_ice_servers, rtc_configuration


@pytest.mark.parametrize(
    ("value", "url", "username", "credential"),
    [
        ("stun:stun.example.org", "stun:stun.example.org", None, None),
        ("stun:10.0.0.1:3479", "stun:10.0.0.1:3479", None, None),
        ("turn:alice:s3cret@turn.example.org:3478", "turn:turn.example.org:3478", "alice", "s3cret"),
        ("turn:al%40ce:p%3Ass@turn.example.org", "turn:turn.example.org", "al@ce", "p:ss"),
        (
            "turn:turn.example.org:443?transport=tcp&username=bob&credential=pw",
            "turn:turn.example.org:443?transport=tcp",
            "bob",
            "pw",
        ),
        ("turns:u:p@turn.example.org:5349", "turns:turn.example.org:5349", "u", "p"),
    ],
)
def test_accepted_forms(value: str, url: str, username: str | None, credential: str | None) -> None:
    server = parse_ice_server(value)
    assert (server.url, server.username, server.credential) == (url, username, credential)
    rtc = server.to_rtc()
    assert (rtc.urls, rtc.username, rtc.credential) == ([url], username, credential)
    browser = server.to_browser()
    assert browser["urls"] == [url] and browser.get("username") == username


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("stun.example.org", "stun:, stuns:, turn: or turns:"),
        ("http://example.org", "stun:, stuns:, turn: or turns:"),
        ("turn:turn.example.org", "needs credentials"),
        ("turn:alice@turn.example.org", "user:password@host"),
        ("stun:u:p@stun.example.org", "no credentials"),
        ("turn:h?username=a&credential=b&foo=1", "unknown query parameter"),
        ("turn:u:p@h?transport=sctp", "transport must be"),
        ("turns:u:p@h?transport=udp", "transport must be"),
        ("turn:u:p@h:notaport", "malformed"),
        ("stun:", "no host"),
    ],
)
def test_rejected_forms(value: str, complaint: str) -> None:
    with pytest.raises(IceServerError, match=complaint):
        parse_ice_server(value)


def test_no_server_means_host_candidates_only() -> None:
    # An explicit empty list: aiortc's default configuration would use a public STUN server.
    assert rtc_configuration(parse_ice_servers([])).iceServers == []
    servers = parse_ice_servers(["stun:s.example:3478", "turn:u:p@t.example:3478"])
    assert [s.urls for s in rtc_configuration(servers).iceServers] == [
        ["stun:s.example:3478"],
        ["turn:t.example:3478"],
    ]


def test_serve_flag_is_repeatable_and_checked() -> None:
    args = build_parser().parse_args(
        ["serve", "--ice-server", "stun:s.example:3478", "--ice-server", "turn:u:p@t.example:3478"]
    )
    assert config_from_args(args).ice_servers == ["stun:s.example:3478", "turn:u:p@t.example:3478"]
    assert config_from_args(build_parser().parse_args(["serve"])).ice_servers == []
    with pytest.raises(ValueError, match="needs credentials"):
        config_from_args(build_parser().parse_args(["serve", "--ice-server", "turn:t.example"]))
