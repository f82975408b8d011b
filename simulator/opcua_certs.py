"""Self-signed certificate of a simulated OPC UA server (simulator code, not the gateway's).

Source: OPC UA Part 6 §6.2.2 (application instance certificate: SubjectAltName URI and DNS/IP,
key usages, serverAuth/clientAuth).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_server_certificate(
    cert_path: Path, key_path: Path, application_uri: str, host: str, days: float = 365.0
) -> None:
    """Write a 2048-bit RSA key (PEM) and a self-signed certificate (DER) for a server.

    Args:
        cert_path: Certificate file (DER).
        key_path: Private key file (PKCS#8 PEM, unencrypted).
        application_uri: The server's ApplicationUri (SubjectAltName URI).
        host: Host name or IP address (SubjectAltName DNS or IP).
        days: Validity from now − 1 min [days].
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ot-gateway simulator {host}")])
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
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
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
