"""The `check` config section (natkit check): typed, validated at load with file:line."""

from __future__ import annotations

import pytest

from natkit.config.ignored import ignored_keys
from natkit.config.load import loads
from natkit.errors import ConfigError


def test_check_is_off_by_default_and_normalised() -> None:
    assert loads("version: 1\n").check.enabled is False
    config = loads('check: {enabled: true, listen: "http://[::1]:8080"}\n')
    assert config.check.listen == "http://[::1]:8080"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('check: {listen: "127.0.0.1:8080"}', "check.listen: expected http://IP:PORT"),
        ('check: {listen: "ftp://127.0.0.1:21"}', "check.listen: expected http://IP:PORT"),
        ('check: {listen: "http://example.org:80"}', "check.listen"),
        ("check: {report_ttl: 0}", "check.report_ttl"),
        ("check: {tests_per_minute: 0}", "check.tests_per_minute"),
        ('check: {enabled: true, listen: "https://127.0.0.1:8443"}', "stun.tls.cert"),
        (
            'stun: {listen: ["tcp://127.0.0.1:3478"]}\ncheck: {enabled: true}',
            "needs a udp:// listener",
        ),
        ("check: {enabeld: true}", 'did you mean "enabled"'),
    ],
)
def test_bad_check_config_is_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text + "\n", source="natkit.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("natkit.yaml:")


def test_the_coturn_engine_says_it_ignores_the_check_page() -> None:
    config = loads(
        "turn: {enabled: true, engine: coturn, auth: {secret: s}}\ncheck: {enabled: true}\n"
    )
    assert "check.enabled" in [item.key for item in ignored_keys(config)]
