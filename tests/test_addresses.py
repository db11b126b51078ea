"""The outbound address policy (`kie_covers.core.addresses`): pure, no network.

Every range is judged twice: in production (private targets not allowed) and
with COVERS_ALLOW_PRIVATE_TARGETS on, which lets loopback and private addresses
pass and nothing else. Resolver answers are given as lists, never looked up.
"""

from __future__ import annotations

import pytest

from kie_covers.core.addresses import TargetRefused, pick_address, refusal

# Documentation and well-known public addresses: only ever judged, never contacted.
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
          "2001:4860:4860::8888"]
#: (address, words the refusal names) for what the development setting lets pass.
PRIVATE = [
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("127.255.255.254", "loopback"),
    ("::1", "loopback"), ("::ffff:127.0.0.1", "127.0.0.1 is a loopback"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"),
    ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    ("fc00::1", "private"), ("fd12:3456:789a::1", "private"),
    ("::ffff:10.1.2.3", "10.1.2.3 is a private"),
]
#: (address, words the refusal names) for what is refused whatever the setting.
NEVER = [
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("::ffff:169.254.169.254", "169.254.169.254 is a link-local"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("::ffff:0.0.0.0", "unspecified"),
]
#: Carrier-grade NAT (RFC 6598, 100.64.0.0/10): neither global nor private.
CGNAT = ["100.64.0.1", "100.100.100.200", "100.127.255.254"]
#: Documentation ranges (RFC 5737, RFC 3849): never routed, refused in production.
DOCUMENTATION = ["192.0.2.1", "198.51.100.7", "203.0.113.9", "2001:db8::1"]


@pytest.mark.parametrize("address", PUBLIC)
@pytest.mark.parametrize("allow_private", [False, True])
def test_public_addresses_are_allowed(address: str, allow_private: bool) -> None:
    assert refusal(address, allow_private) is None


@pytest.mark.parametrize(("address", "named"), PRIVATE)
def test_loopback_and_private_pass_only_with_the_development_setting(
    address: str, named: str
) -> None:
    reason = refusal(address)
    assert reason is not None and f"{named}" in reason
    assert refusal(address, allow_private=False) == reason
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize(("address", "named"), NEVER)
@pytest.mark.parametrize("allow_private", [False, True])
def test_link_local_multicast_reserved_and_unspecified_never_pass(
    address: str, named: str, allow_private: bool
) -> None:
    reason = refusal(address, allow_private)
    assert reason is not None and named in reason


@pytest.mark.parametrize("address", CGNAT)
def test_carrier_grade_nat_is_refused_in_production(address: str) -> None:
    reason = refusal(address)
    assert reason is not None and "not a globally routable" in reason


@pytest.mark.parametrize("address", DOCUMENTATION)
def test_documentation_ranges_are_refused_in_production(address: str) -> None:
    assert refusal(address) is not None


def test_the_first_and_last_addresses_of_each_private_range_are_judged_as_private() -> None:
    # Just outside the RFC 1918 blocks is public; just inside is private.
    assert refusal("172.15.255.255") is None
    assert refusal("172.32.0.1") is None
    assert refusal("11.0.0.1") is None
    assert refusal("172.16.0.0") is not None
    assert refusal("100.63.255.255") is None
    assert refusal("100.128.0.1") is None


@pytest.mark.parametrize("text", ["", "localhost", "example.com", "1.2.3", "999.1.1.1",
                                  "::g", "127.0.0.1:80"])
def test_what_is_not_an_ip_literal_is_refused(text: str) -> None:
    reason = refusal(text, allow_private=True)
    assert reason is not None and "not an IP address" in reason


def test_pick_address_returns_the_first_answer_when_every_answer_is_allowed() -> None:
    assert pick_address(["8.8.8.8", "2001:4860:4860::8888"]) == "8.8.8.8"
    assert pick_address(["127.0.0.1", "::1"], allow_private=True) == "127.0.0.1"
    # An iterator works as well as a list.
    assert pick_address(iter(["1.1.1.1"])) == "1.1.1.1"


@pytest.mark.parametrize(("answers", "named"), [
    (["8.8.8.8", "10.0.0.1"], "10.0.0.1 is a private"),
    (["10.0.0.1", "8.8.8.8"], "10.0.0.1 is a private"),
    (["8.8.8.8", "127.0.0.1"], "127.0.0.1 is a loopback"),
    (["2606:4700:4700::1111", "::1"], "::1 is a loopback"),
    (["1.1.1.1", "::ffff:127.0.0.1"], "127.0.0.1 is a loopback"),
    (["1.1.1.1", "100.64.0.1"], "not a globally routable"),
])
def test_a_host_with_any_refused_answer_is_refused_as_a_whole(
    answers: list[str], named: str
) -> None:
    # The next lookup might pick the other answer, so one bad answer spoils the name.
    with pytest.raises(TargetRefused, match=named):
        pick_address(answers)


@pytest.mark.parametrize("answers", [
    ["127.0.0.1", "169.254.169.254"],
    ["10.0.0.1", "fe80::1"],
    ["8.8.8.8", "0.0.0.0"],
    ["1.1.1.1", "224.0.0.1"],
])
def test_mixed_answers_with_a_never_allowed_one_are_refused_even_in_development(
    answers: list[str],
) -> None:
    with pytest.raises(TargetRefused, match="refused: "):
        pick_address(answers, allow_private=True)


def test_a_host_without_answers_is_refused() -> None:
    with pytest.raises(TargetRefused, match="no address"):
        pick_address([])
