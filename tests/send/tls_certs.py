"""A throw-away certificate authority with a server and a client certificate, made by the real `openssl`."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path, name: str = "ca") -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "2", "-subj", f"/CN=dicom-ai test {name}")
    paths = {}
    for role in ("server", "client"):
        key, csr, cert = directory / f"{role}.key", directory / f"{role}.csr", directory / f"{role}.crt"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={role}")
        extensions = directory / f"{role}.ext"
        extensions.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(extensions))
        paths[role] = (cert, key)
    return Certificates(ca, paths["server"][0], paths["server"][1], paths["client"][0], paths["client"][1])
