"""Trust-list validation of OPC UA server certificates; rejected certificates are copied aside.

asyncua's default validator checks the validity period and ApplicationUri of a peer
certificate, not whether anyone trusts it (RELIABILITY M10). `TrustList.check` does:

1. **Trust**: the certificate is in the trust directory (same SHA-256 fingerprint), or it was
   issued and signed by a CA certificate in it (``BasicConstraints ca=True``). Otherwise it is
   copied to the rejected directory as ``<CN> [<SHA-1 thumbprint>].der``, where an operator
   can review it and move it into the trust directory to trust it.
2. **Validity period**: now within ``notBefore .. notAfter``.
3. **ApplicationUri**: the certificate's SubjectAltName URI equals the ApplicationUri the
   server announces in its endpoint description.

The trust directory is re-read on every check, so trusting a certificate needs no restart.
Files: ``*.der``, ``*.cer``, ``*.crt``, ``*.pem`` in the directory or its ``certs/`` folder
(the OPC UA PKI layout ``trusted/certs``).

Source: OPC UA Part 4 §6.1.3 (certificate validation steps: trust list, validity period,
application URI), Part 6 §6.2.2 (application instance certificates), Part 12 §7.3 (file
layout of trust lists: ``trusted/certs``, ``rejected``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

_CERT_SUFFIXES = frozenset({".der", ".cer", ".crt", ".pem"})


class CertificateRejected(Exception):
    """A server certificate failed validation.

    Attributes:
        reason: ``untrusted``, ``expired``, ``not_yet_valid``, ``uri_mismatch`` or ``invalid``.
        copied_to: Where the certificate was copied (untrusted ones), else None.
    """

    def __init__(self, reason: str, message: str, copied_to: Path | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.copied_to = copied_to


def parse_certificate(data: bytes) -> x509.Certificate:
    """Load a certificate from DER or PEM bytes; a DER chain yields its first certificate.

    Raises:
        ValueError: Not a certificate.
    """
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
        length = int.from_bytes(data[2:4], "big") + 4
        data = data[:length]  # the first certificate of a concatenated DER chain
    return x509.load_der_x509_certificate(data)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 thumbprint (40 upper-case hex digits), the OPC UA certificate identifier."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding: identity of a certificate in the trust list."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


def common_name(cert: x509.Certificate) -> str:
    """Subject CN, or ``unnamed``."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else "unnamed"
    return value if isinstance(value, str) else value.decode(errors="replace")


def application_uris(cert: x509.Certificate) -> list[str]:
    """The SubjectAltName URIs of a certificate (empty when it has none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def describe(cert: x509.Certificate) -> str:
    """``CN=<name>, thumbprint <sha1>`` for messages."""
    return f"CN={common_name(cert)}, thumbprint {thumbprint(cert)}"


@dataclass(frozen=True, slots=True)
class TrustList:
    """A trust directory and the directory where rejected certificates go.

    Attributes:
        trust_dir: Trusted server certificates and CA certificates.
        rejected_dir: Destination of untrusted certificates (created when needed).
    """

    trust_dir: Path
    rejected_dir: Path

    @classmethod
    def from_dirs(cls, trust_dir: str | Path, rejected_dir: str | Path | None) -> TrustList:
        """Build from config values; ``rejected_dir`` defaults to ``<trust_dir>/../rejected``."""
        trust = Path(trust_dir)
        rejected = Path(rejected_dir) if rejected_dir is not None else trust.parent / "rejected"
        return cls(trust, rejected)

    def trusted_certificates(self) -> list[x509.Certificate]:
        """Every readable certificate in the trust directory (unreadable files are skipped)."""
        certs: list[x509.Certificate] = []
        for folder in (self.trust_dir, self.trust_dir / "certs"):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() not in _CERT_SUFFIXES or not path.is_file():
                    continue
                with contextlib.suppress(OSError, ValueError):
                    certs.append(parse_certificate(path.read_bytes()))
        return certs

    def is_trusted(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` itself, or a CA that signed it, is in the trust directory."""
        wanted = fingerprint(cert)
        for trusted in self.trusted_certificates():
            if fingerprint(trusted) == wanted:
                return True
            if _is_ca(trusted) and trusted.subject == cert.issuer:
                try:
                    cert.verify_directly_issued_by(trusted)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return True
        return False

    def reject(self, cert: x509.Certificate) -> Path:
        """Copy ``cert`` (DER) to the rejected directory; return its path.

        Raises:
            OSError: The directory cannot be created or written.
        """
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._@-]+", "_", common_name(cert))[:64] or "unnamed"
        path = self.rejected_dir / f"{name} [{thumbprint(cert)}].der"
        path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return path

    def check(self, data: bytes, application_uri: str | None, now: datetime) -> x509.Certificate:
        """Validate a server certificate; copy it aside when it is not trusted.

        Args:
            data: The certificate as the server sent it (DER, possibly a chain).
            application_uri: The ApplicationUri the server announces, or None to skip the check.
            now: Current time (aware UTC) for the validity period.

        Returns:
            The parsed certificate.

        Raises:
            CertificateRejected: Unparseable, untrusted (copied to ``rejected_dir``), outside
                its validity period, or its SubjectAltName URI differs from the ApplicationUri.

        Source: OPC UA Part 4 §6.1.3 (Table 106: trust list check, validity period,
        application URI check).
        """
        try:
            cert = parse_certificate(data)
        except ValueError as exc:
            msg = f"server certificate cannot be parsed: {exc}"
            raise CertificateRejected("invalid", msg) from None
        if not self.is_trusted(cert):
            try:
                copied: Path | None = self.reject(cert)
            except OSError:
                copied = None
            where = f"copied to {copied}" if copied else f"could not copy to {self.rejected_dir}"
            msg = (
                f"server certificate is not trusted ({describe(cert)}); {where}; "
                f"to trust it, move it into {self.trust_dir}"
            )
            raise CertificateRejected("untrusted", msg, copied)
        if now > cert.not_valid_after_utc:
            expiry = f"{cert.not_valid_after_utc:%Y-%m-%d}"
            msg = f"server certificate expired on {expiry} ({describe(cert)})"
            raise CertificateRejected("expired", msg)
        if now < cert.not_valid_before_utc:
            msg = (
                f"server certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
                f" UTC ({describe(cert)}); check the clocks"
            )
            raise CertificateRejected("not_yet_valid", msg)
        if application_uri is not None:
            uris = application_uris(cert)
            if application_uri not in uris:
                msg = (
                    f"server certificate ApplicationUri mismatch: the server announces "
                    f"{application_uri!r}, its certificate holds {uris or 'no URI'} "
                    f"({describe(cert)})"
                )
                raise CertificateRejected("uri_mismatch", msg)
        return cert


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
