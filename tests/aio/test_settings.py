"""``ListenerSettings.features_for``: what one connection is offered, by the peer's address."""

from __future__ import annotations

import ssl

from smtpfront.aio.settings import ListenerSettings, parse_networks
from smtpfront.core.options import Features


def test_each_connection_gets_the_features_its_address_is_trusted_for() -> None:
    settings = ListenerSettings(features=Features(), xclient_networks=parse_networks(["10.0.0.0/8"]),
                                xforward_networks=parse_networks(["10.1.0.0/16", "2001:db8::/32"]))
    asked = ["10.1.2.3", "192.0.2.7", "10.9.9.9", "::ffff:10.1.0.1", "2001:db8::1", "10.1.2.3", "192.0.2.7"]
    offered = [(f.xclient, f.xforward, f.starttls) for f in map(settings.features_for, asked)]
    assert offered == [(True, True, False), (False, False, False), (True, False, False), (True, True, False),
                       (False, True, False), (True, True, False), (False, False, False)]
    assert settings.features_for("10.1.2.3") is settings.features_for("10.1.9.9")  # made once per kind


def test_starttls_is_offered_with_a_context_and_not_under_implicit_tls() -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert ListenerSettings(tls_context=context).features_for("192.0.2.7").starttls
    assert not ListenerSettings(tls_context=context, implicit_tls=True).features_for("192.0.2.7").starttls
    assert not ListenerSettings().features_for("192.0.2.7").starttls
