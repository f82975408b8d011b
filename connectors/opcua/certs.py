"""Self-signed OPC UA application instance certificates (client or server), with `cryptography`.

The certificate carries what OPC UA peers check: the ApplicationUri as a SubjectAltName URI,
the host name (DNS, or IP address) as SubjectAltName, key usages digitalSignature,
nonRepudiation, keyEncipherment, dataEncipherment and keyCertSign (self-signed), and extended
key usages serverAuth and clientAuth, so one pair works for either role.

Source: OPC UA Part 6 §6.2.2 (Application Instance Certificate profile), Part 4 §6.1.3
(certificate validation), RFC 5280 §4.2.1 (extensions).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def generate_self_signed(
    cert_path: str | Path,
    key_path: str | Path,
    application_uri: str,
    hostname: str,
    *,
    common_name: str | None = None,
    days: float = 730.0,
    not_before: dt.datetime | None = None,
    key_size: int = 2048,
) -> x509.Certificate:
    """Generate an RSA key and a self-signed application instance certificate.

    Args:
        cert_path: Certificate file to write: DER when it ends in ``.der``, else PEM.
        key_path: Private key file to write (PKCS#8 PEM, unencrypted, mode 0600).
        application_uri: The application's ApplicationUri (SubjectAltName URI), e.g.
            ``urn:plant-a:ot-gateway``; servers compare it with the client's ApplicationUri.
        hostname: Host name or IP address of the application (SubjectAltName DNS or IP).
        common_name: Subject CN; default ``ot-gateway@<hostname>``.
        days: Validity [days] from ``not_before``, > 0 (2 years by default).
        not_before: Start of validity (aware); default now − 1 minute. A past value with a
            short ``days`` makes an expired certificate (tests).
        key_size: RSA modulus [bits]: 2048 (Basic256Sha256, Aes128_Sha256_RsaOaep) to 4096
            (Aes256_Sha256_RsaPss allows 2048..4096).

    Returns:
        The certificate written.

    Raises:
        ValueError: ``days`` ≤ 0, ``key_size`` outside 2048..4096, or an empty application URI.
        OSError: A file cannot be written (parent directories are created).

    Source: OPC UA Part 6 §6.2.2; Part 7 (RSA key sizes of the security policies).
    """
    if days <= 0:
        msg = f"days must be > 0, got {days}"
        raise ValueError(msg)
    if not 2048 <= key_size <= 4096:
        msg = f"key_size must be 2048..4096 bits, got {key_size}"
        raise ValueError(msg)
    if not application_uri:
        msg = "application_uri must not be empty"
        raise ValueError(msg)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"ot-gateway@{hostname}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ot-gateway"),
        ]
    )
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        alt_names.append(x509.DNSName(hostname))
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = Path(cert_path), Path(key_path)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    encoding = (
        serialization.Encoding.DER
        if cert_file.suffix.lower() == ".der"
        else serialization.Encoding.PEM
    )
    cert_file.write_bytes(cert.public_bytes(encoding))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    os.chmod(key_file, 0o600)
    return cert
