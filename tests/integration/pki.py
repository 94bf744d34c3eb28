"""Throwaway certificates for the TLS tests, made with the openssl command: a CA, server
certificates for the brokers, client certificates for mutual TLS (PKCS#8 keys, as Kafka's PEM
key stores want them)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True, slots=True)
class Cert:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS tests make their certificates with the openssl command")
    subprocess.run([openssl, *map(str, args)], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> Cert:
    ca = Cert(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", ca.key, "-out", ca.cert,
    )  # fmt: skip
    return ca


def make_cert(
    directory: Path,
    ca: Cert,
    name: str,
    *,
    alt_names: str | None = None,
    client: bool = False,
    key_password: str | None = None,
) -> Cert:
    """A certificate signed by `ca`: a server's (`alt_names`, e.g. "IP:127.0.0.1") or a
    client's (CN = `name`); its key encrypted with `key_password` when given."""
    made = Cert(directory / f"{name}.pem", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
    ]
    if alt_names:
        lines.insert(0, f"subjectAltName={alt_names}")
    ext.write_text("\n".join(lines) + "\n")
    plain_key = directory / f"{name}.plain.key"
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-subj", f"/CN={name}", "-keyout", plain_key, "-out", csr,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
        "-set_serial", str(secrets.randbits(63)), "-days", "1", "-extfile", ext,
        "-out", made.cert,
    )  # fmt: skip
    if key_password is None:
        plain_key.rename(made.key)
    else:
        _openssl(
            "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", plain_key, "-out", made.key,
            "-passout", f"pass:{key_password}",
        )  # fmt: skip
        plain_key.unlink()
    return made
