"""DNS record generation and `dns check` logic, against zone files (no network)."""

from __future__ import annotations

from pathlib import Path

import dns.zone
import pytest

from mailfleet.config import parse
from mailfleet.dns import publish, records
from mailfleet.dns.check import check
from mailfleet.dns.lookup import Answer, ZoneFileLookup
from mailfleet.errors import ConfigError

CONFIG = """\
[mail]
domain = "example.org"
hostname = "mail.example.org"
domains = ["example.net"]

[dns]
dmarc_policy = "reject"

[[hosts]]
name = "mx1"
address = "mx1.example.org"
ipv4 = "203.0.113.10"
ipv6 = "2001:db8::10"
"""
KEY = "v=DKIM1; h=sha256; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 350 + "IDAQAB"
OTHER_KEY = KEY.replace("xxxx", "yyyy", 1)


def generated(text: str = CONFIG) -> list[records.Record]:
    return records.generate(parse(text), {"example.org": KEY, "example.net": KEY})


def find(recs, name, type_, kind=None):
    return [r for r in recs if r.name == name and r.type == type_ and (kind is None or r.kind == kind)]


def test_every_domain_gets_its_records_with_levels_and_reasons():
    recs = generated()
    for domain in ("example.org", "example.net"):
        (mx,) = find(recs, domain, "MX")
        assert mx.value == "10 mail.example.org." and mx.level == "required"
        (spf,) = find(recs, domain, "TXT", "SPF")
        assert spf.value == "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"
        (dkim,) = find(recs, f"mail._domainkey.{domain}", "TXT")
        assert dkim.value == KEY and dkim.kind == "DKIM"
        (dmarc,) = find(recs, f"_dmarc.{domain}", "TXT")
        assert dmarc.value == "v=DMARC1; p=reject; rua=mailto:postmaster@example.org"
        assert find(recs, f"_mta-sts.{domain}", "TXT")[0].value.startswith("v=STSv1; id=")
        assert find(recs, f"mta-sts.{domain}", "CNAME")[0].value == "mail.example.org."
        assert find(recs, f"_smtp._tls.{domain}", "TXT")[0].level == "recommended"
        assert find(recs, domain, "CAA")[0].value == '0 issue "letsencrypt.org"'
        assert find(recs, f"_submissions._tcp.{domain}", "SRV")[0].value == "0 1 465 mail.example.org."
        assert find(recs, f"autoconfig.{domain}", "CNAME")[0].level == "optional"
    assert find(recs, "mail.example.org", "A")[0].value == "203.0.113.10"
    assert find(recs, "mail.example.org", "AAAA")[0].value == "2001:db8::10"
    assert find(recs, "10.113.0.203.in-addr.arpa", "PTR")[0].value == "mail.example.org."
    # reports for example.net go to example.org, which must say it accepts them
    assert find(recs, "example.net._report._dmarc.example.org", "TXT")[0].value == "v=DMARC1"
    assert not find(recs, "example.org._report._dmarc.example.org", "TXT")
    assert all(r.reason and r.level in records.LEVELS for r in recs)


def test_long_dkim_txt_is_split_into_255_byte_strings():
    (dkim,) = find(generated(), "mail._domainkey.example.org", "TXT")
    pieces = dkim.rdata.split('" "')
    assert len(KEY) > 255 and len(pieces) == 2
    assert [len(p.strip('"')) for p in pieces] == [255, len(KEY) - 255]
    # and the zone line is one dnspython accepts, giving back the same text
    zone = dns.zone.from_text(dkim.zone_line() + "\n", origin="example.org", relativize=False,
                              check_origin=False)
    rdata = zone.find_rdataset("mail._domainkey.example.org.", "TXT")[0]
    assert b"".join(rdata.strings).decode() == KEY


def test_mta_sts_id_changes_with_the_policy():
    testing = find(generated(), "_mta-sts.example.org", "TXT")[0].value
    enforce = find(generated(CONFIG.replace('dmarc_policy = "reject"', 'mta_sts_mode = "enforce"')),
                   "_mta-sts.example.org", "TXT")[0].value
    assert testing != enforce
    assert "mode: enforce" in records.mta_sts_policy("enforce", ["mail.example.org"])
    none = generated(CONFIG.replace('dmarc_policy = "reject"', 'mta_sts_mode = "none"'))
    assert not find(none, "_mta-sts.example.org", "TXT")


def test_missing_dkim_key_leaves_only_that_record_out():
    recs = records.generate(parse(CONFIG), {"example.org": KEY, "example.net": None})
    assert find(recs, "mail._domainkey.example.org", "TXT")
    assert not find(recs, "mail._domainkey.example.net", "TXT")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "mx1.example.org"])
def test_a_host_without_public_address_is_named(address):
    # loopback, private and name addresses are how mailfleet connects, not what the world sees
    text = CONFIG.replace('address = "mx1.example.org"\nipv4 = "203.0.113.10"\nipv6 = "2001:db8::10"',
                          f'address = "{address}"')
    with pytest.raises(records.MissingAddress, match=r"hosts\[0\] \(mx1\).*ipv4"):
        records.generate(parse(text), {})
    public = parse(text.replace(f'address = "{address}"', 'address = "192.0.43.10"'))
    assert records.generate(public, {})[0].value == "192.0.43.10"


def test_an_apex_mail_host_gets_one_spf_record():
    apex = parse(CONFIG.replace('hostname = "mail.example.org"', 'hostname = "example.org"'))
    spf = [r for r in records.generate(apex, {}) if r.name == "example.org" and r.kind == "SPF"]
    assert [r.value for r in spf] == ["v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"]


def test_bad_dns_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"line 7: dns.dmarc_policy"):
        parse(CONFIG.replace('"reject"', '"block"'))
    with pytest.raises(ConfigError, match=r"dns.resolvers.*not a resolver address"):
        parse(CONFIG.replace('dmarc_policy = "reject"', 'resolvers = ["dns.example"]'))
    with pytest.raises(ConfigError, match=r"hosts\[0\].ipv4.*not an IPv4 address"):
        parse(CONFIG.replace('ipv4 = "203.0.113.10"', 'ipv4 = "2001:db8::1"'))
    with pytest.raises(ConfigError, match=r"dns.zones\[0\].server.*not an IP address"):
        parse(CONFIG.replace("[dns]", '[[dns.zones]]\nzone = "example.org"\nserver = "ns1.example.org"\n'
                             'tsig_key_file = "k"\n\n[dns]'))


GOOD_ZONE = """\
$TTL 3600
@ IN SOA ns1 hostmaster 1 3600 600 86400 300
@ IN NS ns1
ns1 IN A 203.0.113.53
"""


def zone_with(tmp_path: Path, recs: list[records.Record], extra: str = "",
              skip: set[tuple[str, str]] = frozenset()) -> Path:
    lines = [r.zone_line() for r in recs
             if r.name.endswith("example.org") and (r.name, r.kind) not in skip]
    path = tmp_path / "example.org.zone"
    path.write_text(GOOD_ZONE + "\n".join(lines) + "\n" + extra)
    return path


def org_records() -> list[records.Record]:
    return [r for r in generated() if r.name.endswith("example.org")]


def test_a_correct_zone_checks_clean(tmp_path):
    recs = org_records()
    findings = check(recs, ZoneFileLookup(zone_with(tmp_path, recs), "example.org"))
    assert findings and all(f.status == "ok" for f in findings), [f for f in findings if f.problem]
    # names outside the zone (the PTR) are not judged from this file
    assert not [f for f in findings if f.type == "PTR"]


def test_deliberate_mistakes_are_each_reported_with_their_fix(tmp_path):
    recs = org_records()
    skip = {("example.org", "SPF"), ("mail._domainkey.example.org", "DKIM"),
            ("_dmarc.example.org", "DMARC"), ("_smtp._tls.example.org", "TLS-RPT"),
            ("mail.example.org", "A"), ("example.org", "CAA"), ("autoconfig.example.org", "CNAME")}
    mistakes = "\n".join([
        '@ IN TXT "v=spf1 ip4:203.0.113.10 -all"',
        '@ IN TXT "v=spf1 include:_spf.google.com ~all"',           # two SPF records
        '@ IN TXT "google-site-verification=abc"',                   # not ours: ignored
        "@ IN MX 20 old-mx.example.com.",                            # an old MX left behind
        f'mail._domainkey IN TXT {records.quote_txt(OTHER_KEY)}',   # a stale key
        '_dmarc IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@example.org"',
        "mail IN A 198.51.100.7",                                    # the old server's address
        '@ IN CAA 0 issue "sectigo.com"',
        "autoconfig IN A 198.51.100.7",    # A instead of CNAME, to where mail.* points: fine
    ]) + "\n"
    findings = check(recs, ZoneFileLookup(zone_with(tmp_path, recs, mistakes, skip), "example.org"))
    by = {(f.name, f.kind): f for f in findings}

    spf = by[("example.org", "SPF")]
    assert spf.status == "wrong" and "2 SPF records" in spf.message
    assert "keep only one" in spf.fix and "ip4:203.0.113.10 ip6:2001:db8::10 -all" in spf.fix
    mx = by[("example.org", "MX")]
    assert mx.status == "extra" and "old-mx.example.com" in mx.message and mx.fix.startswith("remove")
    dkim = by[("mail._domainkey.example.org", "DKIM")]
    assert dkim.status == "wrong" and "not the host's key" in dkim.message and KEY[:40] in dkim.fix
    dmarc = by[("_dmarc.example.org", "DMARC")]
    assert dmarc.status == "wrong" and "p=none" in dmarc.message and "p=reject" in dmarc.fix
    tlsrpt = by[("_smtp._tls.example.org", "TLS-RPT")]
    assert tlsrpt.status == "missing" and tlsrpt.fix.startswith("add _smtp._tls.example.org. TXT")
    a = by[("mail.example.org", "A")]
    assert a.status == "wrong" and "198.51.100.7" in a.message and "203.0.113.10" in a.fix
    caa = by[("example.org", "CAA")]
    assert caa.status == "wrong" and "letsencrypt.org" in caa.message
    assert by[("autoconfig.example.org", "CNAME")].status == "ok"
    assert {k for k, f in by.items() if f.problem} == {
        ("example.org", "SPF"), ("example.org", "MX"), ("mail._domainkey.example.org", "DKIM"),
        ("_dmarc.example.org", "DMARC"), ("_smtp._tls.example.org", "TLS-RPT"),
        ("mail.example.org", "A"), ("example.org", "CAA")}


@pytest.mark.parametrize("spf, ok", [
    ("v=spf1 mx -all", True),
    ("v=spf1 ip4:203.0.113.0/24 ip6:2001:db8::/32 ~all", True),
    ("v=spf1 ip4:203.0.113.10 -all", False),      # the IPv6 address may not send
    ("v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 +all", False),
    ("v=spf1 ip4:203.0.113.10 ip6:2001:db8::10", False),
])
def test_spf_is_judged_by_what_it_allows(tmp_path, spf, ok):
    recs = [r for r in org_records() if r.name == "example.org" and r.kind == "SPF"]
    path = tmp_path / "z"
    path.write_text(GOOD_ZONE + f'@ IN TXT "{spf}"\n')
    (finding,) = check(recs, ZoneFileLookup(path, "example.org"))
    assert (finding.status == "ok") is ok, finding


class FakeServer:
    """A zone's current records, answering like ServerLookup."""

    def __init__(self, text: str) -> None:
        self.zone = dns.zone.from_text(GOOD_ZONE + text, origin="example.org", relativize=False)

    def __call__(self, name, rdtype):
        node = self.zone.get_node(name + ".")
        rdataset = node.get_rdataset(1, dns.rdatatype.from_text(rdtype)) if node else None
        return Answer(list(rdataset) if rdataset else [])


import dns.rdatatype  # noqa: E402


def test_publish_plan_sends_only_differences_and_keeps_foreign_txt(tmp_path):
    config = parse(CONFIG.replace("[dns]", '[[dns.zones]]\nzone = "example.org"\nserver = "203.0.113.53"\n'
                                  'tsig_key_file = "k"\n\n[dns]'))
    recs = records.generate(config, {"example.org": KEY, "example.net": KEY})
    empty = FakeServer("")
    plans, uncovered = publish.plan(recs, config.dns.zones, {"example.org": empty})
    (plan,) = plans
    adds = [c for c in plan.changes if c.action == "add"]
    assert len(adds) == len([r for r in recs if r.name.endswith("example.org")])
    # example.net and the PTR live in no configured zone: listed, not sent
    assert {r.domain for r in uncovered if r.type == "MX"} == {"example.net"}
    assert any(r.type == "PTR" for r in uncovered)

    # a zone that already holds everything, plus a foreign TXT and an old SPF and MX
    current = "\n".join(c_line for c_line in (r.zone_line() for r in recs if r.name.endswith("example.org")
                                               and not (r.kind == "SPF" and r.name == "example.org")))
    current += '\n@ IN TXT "v=spf1 a -all"\n@ IN TXT "hello=world"\n@ IN MX 20 old.example.com.\n'
    plans, _ = publish.plan(recs, config.dns.zones, {"example.org": FakeServer(current)})
    changes = [str(c) for c in plans[0].changes]
    assert changes == [
        "- example.org. MX (all)",
        "+ example.org. 3600 MX 10 mail.example.org.",
        '- example.org. TXT "v=spf1 a -all"',
        '+ example.org. 3600 TXT "v=spf1 ip4:203.0.113.10 ip6:2001:db8::10 -all"',
    ]


def test_tsig_key_file_is_read_or_named(tmp_path):
    good = tmp_path / "lab.key"
    good.write_text('key "mailfleet-lab" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0c2VjcmV0";\n};\n')
    key = publish.read_key(str(good))
    assert (key.name, key.algorithm, key.secret) == ("mailfleet-lab", "hmac-sha256", "c2VjcmV0c2VjcmV0")
    bad = tmp_path / "bad.key"
    bad.write_text("secret\n")
    with pytest.raises(ConfigError, match="bad.key is not a TSIG key file"):
        publish.read_key(str(bad))
    with pytest.raises(ConfigError, match="Cannot read the TSIG key file"):
        publish.read_key(str(tmp_path / "missing.key"))


def test_publish_clears_address_records_where_a_cname_goes():
    config = parse(CONFIG.replace("[dns]", '[[dns.zones]]\nzone = "example.org"\nserver = "203.0.113.53"\n'
                                  'tsig_key_file = "k"\n\n[dns]'))
    recs = [r for r in records.generate(config, {}) if r.name == "autoconfig.example.org"]
    plans, _ = publish.plan(recs, config.dns.zones,
                            {"example.org": FakeServer("autoconfig IN A 198.51.100.7\n")})
    assert [str(c) for c in plans[0].changes] == [
        "- autoconfig.example.org. A (all)",
        "+ autoconfig.example.org. 3600 CNAME mail.example.org.",
    ]
