"""The listener's DICOM TLS context (PS3.15 Annex B.1, the secure transport connection profile) from `[tls]`."""

from __future__ import annotations

import ssl

from dicom_ai.config import ConfigError, TlsSettings


def server_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS 1.2+ server context: our certificate and key; client certificates verified against
    `tls.ca_certificates` and required when `tls.require_client_certificate`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.certificate / tls.private_key: cannot load {tls.certificate} with "
                          f"{tls.private_key}: {exc}") from None
    if tls.ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_certificates))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls.ca_certificates: cannot load {tls.ca_certificates}: {exc}") from None
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else (
        ssl.CERT_OPTIONAL if tls.ca_certificates is not None else ssl.CERT_NONE)
    return context
