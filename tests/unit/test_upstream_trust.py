"""What a mail host hands its web hosts is trusted there: only mailfleet's local CA of that
host passes, and only well-formed passwords (pure logic, certificates made here)."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailfleet.services import upstream

FQDN = "mx1.example.org"


def _cert(cn: str, ca: bool = True, issuer_cn: str | None = None) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailfleet"),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]) if issuer_cn else subject
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_only_the_mail_hosts_own_local_ca_is_accepted():
    good = _cert(f"mailfleet local CA for {FQDN}")
    assert upstream.local_ca(good, FQDN) == good
    assert upstream.local_ca(good + good, FQDN) == ""  # a second certificate smuggled along
    assert upstream.local_ca(_cert("mailfleet local CA for other.example.org"), FQDN) == ""
    assert upstream.local_ca(_cert(f"mailfleet local CA for {FQDN}", ca=False), FQDN) == ""
    assert upstream.local_ca(_cert(f"mailfleet local CA for {FQDN}", issuer_cn="Someone"), FQDN) == ""
    assert upstream.local_ca("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                             FQDN) == ""
    assert upstream.local_ca("", FQDN) == ""


def test_passwords_that_could_break_a_connection_string_are_dropped():
    ca = _cert(f"mailfleet local CA for {FQDN}")
    text = ("postgres-mailfleet_password abcdefghijklmnopqrstuvwx\n"
            "postgres-mailfleet_roundcube p@ss/word:with'quotes-and-more\n"
            "postgres-mailfleet_sogo \n"
            "-- ca\n" + ca)
    found = upstream.parse(text, FQDN)
    assert found.secrets == {"postgres-mailfleet_password": "abcdefghijklmnopqrstuvwx"}
    assert found.ca == ca
