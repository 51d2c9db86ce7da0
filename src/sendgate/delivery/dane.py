"""DANE for outbound SMTP (RFC 7672): which TLSA records apply, and whether a leaf matches them.

The caller looks up `_25._tcp.<mx host>` TLSA records and passes them here only when the answer
was DNSSEC-validated (`Answer.secure`); an insecure TLSA RRset is ignored entirely, as if there
were no records (RFC 7672 section 2.2). `requirement` then says what the connection must do:

- "none": no records; DANE does not apply (other policy, such as MTA-STS, may).
- "dane": usable DANE-EE(3) records exist. TLS is mandatory and the server's leaf certificate
  must satisfy `leaf_matches`; if it does not, the client must not deliver to that host and tries
  the next MX or defers (RFC 7672 section 2.2). Name and expiry are not checked (section 3.1.1).
- "encrypt": the RRset holds records but none is usable (PKIX-TA(0)/PKIX-EE(1), unknown
  selectors or matching types, digests of the wrong length). RFC 7672 section 2.2 makes TLS
  mandatory but does not require authentication: deliver over TLS without checking the
  certificate, never in plaintext.
- "defer": the only usable records are DANE-TA(2). Matching them needs the server's certificate
  chain, which Python 3.11's ssl module does not expose publicly (`get_unverified_chain` is
  public only from 3.13). Those records are not "unusable" in the RFC's sense (their parameters
  are valid), so treating them as such would turn a limit of this client into a silent downgrade
  to unauthenticated TLS for a domain that asked for authentication. The client treats the host
  as one it cannot authenticate (RFC 7672 section 2.2: no delivery after failed
  authentication): TLS stays mandatory, that MX host is skipped, and the message is deferred
  when no other host can be authenticated. DANE-TA matching is not covered on any Python
  version yet; when it is added, 3.13's chain makes DANE-TA records "dane" too.

When an RRset holds both DANE-EE and DANE-TA records, only the DANE-EE ones are checked: a server
whose leaf matches none of them is refused even if a DANE-TA record would have matched. That
errs towards deferral, never towards sending unauthenticated.

Security: TLSA records come from DNS and the certificate from the remote server; both are
untrusted. Records with unknown parameters or digest lengths that do not fit are discarded,
certificates are parsed by `cryptography`, and digests are compared in constant time.
"""

import hashlib
import hmac
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sendgate.delivery.dns import TlsaRecord

DANE_TA = 2
DANE_EE = 3
SELECTOR_CERT = 0
SELECTOR_SPKI = 1
MATCH_FULL = 0
MATCH_SHA256 = 1
MATCH_SHA512 = 2

_DIGEST_SIZES = {MATCH_SHA256: 32, MATCH_SHA512: 64}


def usable(records: Sequence[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """Keep the records a DANE SMTP client may use: DANE-TA/DANE-EE with known parameters."""
    return tuple(record for record in records if _is_usable(record))


def leaf_matches(records: Sequence[TlsaRecord], leaf_der: bytes) -> bool:
    """Tell whether any usable DANE-EE record matches the leaf certificate `leaf_der` (DER)."""
    candidates = [record for record in usable(records) if record.usage == DANE_EE]
    if not candidates:
        return False
    try:
        cert = x509.load_der_x509_certificate(leaf_der)
    except ValueError:
        return False
    spki: bytes | None = None
    for record in candidates:
        if record.selector == SELECTOR_CERT:
            selected = leaf_der
        else:
            if spki is None:
                spki = _spki(cert)
            if not spki:
                continue
            selected = spki
        if hmac.compare_digest(_digest(record.mtype, selected), record.data):
            return True
    return False


def requirement(records: Sequence[TlsaRecord]) -> str:
    """Say what a secure TLSA RRset demands: "none", "dane", "encrypt" or "defer" (see above)."""
    if not records:
        return "none"
    good = usable(records)
    if any(record.usage == DANE_EE for record in good):
        return "dane"
    if good:
        return "defer"
    return "encrypt"


def _is_usable(record: TlsaRecord) -> bool:
    if record.usage not in (DANE_TA, DANE_EE):
        return False
    if record.selector not in (SELECTOR_CERT, SELECTOR_SPKI):
        return False
    if record.mtype == MATCH_FULL:
        return len(record.data) > 0
    return _DIGEST_SIZES.get(record.mtype) == len(record.data)


def _spki(cert: x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of `cert`, or b"" for a key type cryptography cannot load."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return b""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _digest(mtype: int, data: bytes) -> bytes:
    if mtype == MATCH_SHA256:
        return hashlib.sha256(data).digest()
    if mtype == MATCH_SHA512:
        return hashlib.sha512(data).digest()
    return data
