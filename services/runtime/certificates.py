"""When the certificates a process loaded at its start expire. Its TLS contexts (Kafka, PostgreSQL) are built once,
so a Secret renewed under a running pod (Strimzi renews a KafkaUser's certificate well before it expires) reaches it
only when the pod restarts: the expiry of what it holds is what an alert must watch."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509


def database_files(url: str) -> list[str]:
    """The certificate files a libpq-style URL names (asyncpg reads `sslrootcert` and `sslcert`)."""
    query = parse_qs(urlsplit(url).query)
    return [value for key in ("sslrootcert", "sslcert") for value in query.get(key, [])]


def expiries(paths: Iterable[str]) -> dict[str, datetime]:
    """Each file's earliest `notAfter` (a CA bundle holds several); a file that is not PEM certificates is left out
    (the client that loads it refuses it at start, in words of its own)."""
    found: dict[str, datetime] = {}
    for path in dict.fromkeys(paths):
        try:
            certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError):
            continue
        found[path] = min(certificate.not_valid_after_utc for certificate in certificates)
    return found
