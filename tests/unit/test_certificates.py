"""The expiry of what a process loaded at start, exported for an alert (an operator's review: a renewed Secret
reaches a running pod only when it restarts, and nothing said so before the certificate ran out)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import httpx
from cryptography import x509

from services.notifier.app import build_runtime
from services.notifier.settings import NotifierSettings
from services.runtime import certificates
from tests.tls import private_ca


def _not_after(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def test_each_file_gives_its_earliest_expiry_and_what_is_not_pem_is_left_out(tmp_path: Path) -> None:
    first, second = private_ca(tmp_path / "a"), private_ca(tmp_path / "b")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(second.ca_file.read_bytes() + first.ca_file.read_bytes())
    (tmp_path / "notes.txt").write_text("not a certificate")
    found = certificates.expiries([str(first.cert_file), str(bundle), str(tmp_path / "notes.txt"), "/absent.pem"])
    assert found == {
        str(first.cert_file): _not_after(first.cert_file),
        str(bundle): min(_not_after(first.ca_file), _not_after(second.ca_file)),
    }


def test_the_database_urls_certificate_files_are_read_from_its_query() -> None:
    url = "postgresql://svc:pw@db:5432/collabkare?sslmode=verify-full&sslrootcert=/etc/pg/ca.crt&sslcert=/etc/pg/c.crt"
    assert certificates.database_files(url) == ["/etc/pg/ca.crt", "/etc/pg/c.crt"]
    assert certificates.database_files("postgresql://svc@db/collabkare?sslmode=prefer") == []


async def test_a_service_exports_the_expiry_of_every_certificate_it_loads(tmp_path: Path) -> None:
    kafka, database, smtp = private_ca(tmp_path / "k"), private_ca(tmp_path / "d"), private_ca(tmp_path / "s")
    settings = NotifierSettings.model_validate(
        {
            "database_url": f"postgresql://notifier@db/collabkare?sslmode=verify-full&sslrootcert={database.ca_file}",
            "kafka_bootstrap_servers": "kafka:9093",
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": kafka.ca_file,
            "kafka_ssl_certfile": kafka.cert_file,
            "kafka_ssl_keyfile": kafka.key_file,
            "jwt_secret": "x" * 32,
            "smtp_starttls": True,
            "smtp_ca_file": smtp.ca_file,
        }
    )
    runtime = build_runtime(settings)
    runtime._watch_certificates()  # what start() does first; it reads the files, nothing else
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=runtime.http_app()), base_url="http://t") as http:
        text = (await http.get("/metrics")).text
    seen = {
        path: float(value)
        for path, value in re.findall(r'^tls_certificate_expiry_timestamp_seconds\{file="([^"]+)"\} (\S+)$', text, re.M)
    }
    expected = [kafka.ca_file, kafka.cert_file, database.ca_file, smtp.ca_file]
    assert seen == {str(path): _not_after(path).timestamp() for path in expected}
