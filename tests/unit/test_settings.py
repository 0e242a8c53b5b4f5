"""A missing or malformed setting stops start-up with one line naming the variable and what it expects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from services.notifier import handlers, subscribers
from services.notifier.settings import NotifierSettings
from services.runtime.consumer import BatchConsumer, ConsumerContext
from services.runtime.kafka import MAX_POLL_INTERVAL_SECONDS
from services.runtime.metrics import Metrics
from services.runtime.settings import RuntimeSettings, describe_errors
from tests.tls import private_ca

GOOD = {
    "DATABASE_URL": "postgresql://connections@127.0.0.1:5432/collabkare",
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "JWT_SECRET": "x" * 32,
}


def _start(env: dict[str, str], service: str = "connections") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in GOOD and k not in {"PORT", "JWT_ALGORITHM"}}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            f"from services.{service}.settings import {service.capitalize()}Settings as S;"
            "from services.runtime.settings import load_settings; load_settings(S)",
        ],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_good_settings_load() -> None:
    assert _start(GOOD).returncode == 0


def test_missing_variable_is_named() -> None:
    result = _start({k: v for k, v in GOOD.items() if k != "DATABASE_URL"})
    assert result.returncode == 2
    assert result.stderr.strip() == "configuration error: DATABASE_URL: required but not set"


def test_malformed_values_say_what_is_expected() -> None:
    result = _start({**GOOD, "PORT": "eighty", "DATABASE_URL": "mysql://nope"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 2, result.stderr
    assert any(line.startswith("configuration error: PORT: ") and "integer" in line for line in lines)
    assert any(line.startswith("configuration error: DATABASE_URL: ") for line in lines)


def test_log_level_is_taken_in_either_case_and_the_cli_names_a_wrong_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A newcomer's probe: LOG_LEVEL=debug stopped every service (upper case only) and crashed the CLI with a
    traceback (KeyError: 'level debug'), though the README promises one line for a value refused."""
    from collabkare.cli import main

    assert _start({**GOOD, "LOG_LEVEL": "debug"}).returncode == 0
    wrong = _start({**GOOD, "LOG_LEVEL": "loud"})
    assert wrong.returncode == 2 and wrong.stderr.startswith("configuration error: LOG_LEVEL: ")
    monkeypatch.setenv("LOG_LEVEL", "loud")
    assert main(["token", "staff", "--practice", "71b3f117-ab01-4b1e-9ac0-3f5f9a3c2d10", "--role", "admin"]) == 2
    assert capsys.readouterr().err.strip() == (
        "collabkare: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'"
    )


def test_a_value_still_holding_the_overlays_placeholder_is_refused_unquoted() -> None:
    """deploy/k8s/prod marks what each deployment must set with SET-ME: a pod started with one would refuse every
    token or email from a domain nobody owns. The line names the variables; it does not quote DATABASE_URL, which
    the manifests assemble from the placeholder host and the role's password."""
    placeholder_host = "postgresql://connections:s3cret-pw@SET-ME-your-postgresql-host:5432/collabkare"
    result = _start({**GOOD, "DATABASE_URL": placeholder_host, "JWT_ISSUER": "SET-ME-your-issuer"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: DATABASE_URL, JWT_ISSUER: still the overlay's SET-ME placeholder; set it"
        " (DATABASE_HOST in the overlay)"
    )
    notifier = _start({**GOOD, "SMTP_FROM": "CollabKare <no-reply@SET-ME-your-domain>"}, service="notifier")
    assert notifier.returncode == 2 and "SMTP_FROM: still the overlay's SET-ME placeholder" in notifier.stderr


def test_a_migration_job_given_the_placeholder_host_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The migration Job runs first, with the URL the manifests assemble from DATABASE_HOST: it stops on the
    placeholder with the setting to change, not on a failed name lookup, and without the password."""
    from collabkare.cli import main

    url = "postgresql://admin:s3cret-pw@SET-ME-your-postgresql-host:5432/collabkare?sslmode=verify-full"
    monkeypatch.setenv("MIGRATION_DATABASE_URL", url)
    assert main(["migrate", "notifier"]) == 1
    error = capsys.readouterr().err
    assert error.strip() == (
        "collabkare: MIGRATION_DATABASE_URL: still the overlay's SET-ME placeholder; set DATABASE_HOST in the overlay"
    )


def test_cors_origins_take_a_json_list_or_commas_and_a_bad_list_is_one_line() -> None:
    def origins(value: str) -> list[str]:
        return RuntimeSettings.model_validate(
            {name.lower(): v for name, v in GOOD.items()} | {"cors_origins": value}
        ).cors_origins

    assert origins('["https://a.example", "https://b.example"]') == ["https://a.example", "https://b.example"]
    assert origins("https://a.example, https://b.example") == ["https://a.example", "https://b.example"]
    assert origins("https://a.example") == ["https://a.example"]
    result = _start({**GOOD, "CORS_ORIGINS": '["https://a.example"'})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("configuration error: CORS_ORIGINS: expected a JSON list"), result.stderr


def test_short_jwt_secret_is_refused() -> None:
    result = _start({**GOOD, "JWT_SECRET": "short"})
    assert result.returncode == 2
    assert "JWT_SECRET: expected at least 32 bytes" in result.stderr
    assert "Traceback" not in result.stderr


def _problems(cls: type[RuntimeSettings], **values: Any) -> list[str]:
    try:
        cls.model_validate({name.lower(): value for name, value in GOOD.items()} | values)
    except ValidationError as error:
        return describe_errors(error)
    return []


def test_a_ca_file_must_exist_and_hold_certificates(tmp_path: Path) -> None:
    ca = private_ca(tmp_path)
    (tmp_path / "notes.txt").write_text("not a certificate")
    assert _problems(NotifierSettings, smtp_starttls=True, smtp_ca_file=ca.ca_file) == []
    [missing] = _problems(NotifierSettings, smtp_starttls=True, smtp_ca_file=tmp_path / "absent.pem")
    assert missing.startswith("SMTP_CA_FILE: ") and "file" in missing
    assert _problems(NotifierSettings, smtp_tls=True, smtp_ca_file=tmp_path / "notes.txt") == [
        f"SMTP_CA_FILE: {tmp_path / 'notes.txt'} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"
    ]


def test_a_ca_file_that_would_check_nothing_is_refused(tmp_path: Path) -> None:
    """A CA file with TLS off (or certificates unchecked) is an operator who believes the relay is verified."""
    ca = private_ca(tmp_path)
    for values in ({}, {"smtp_starttls": True, "smtp_validate_certs": False}):
        [problem] = _problems(NotifierSettings, smtp_ca_file=ca.ca_file, **values)
        assert problem.startswith("SMTP_CA_FILE: it checks the relay's certificate, so it needs SMTP_STARTTLS")
    rs256 = {"jwt_algorithm": "RS256", "jwt_jwks_ca_file": ca.ca_file}
    assert _problems(RuntimeSettings, **rs256, jwt_jwks_url="https://id.example/jwks.json") == []
    assert _problems(RuntimeSettings, **rs256, jwt_jwks_url="http://127.0.0.1:9000/jwks.json") == [
        "JWT_JWKS_CA_FILE: it checks the key set's HTTPS certificate; JWT_JWKS_URL is not https://"
    ]


def test_the_key_set_comes_over_https_unless_it_is_on_this_machine() -> None:
    """Over plain http, anyone on the way to the identity provider could hand over a key and sign any token."""
    rs256 = {"jwt_algorithm": "RS256"}
    for url in (
        "https://id.example/jwks.json",
        "http://127.0.0.1:9000/jwks",
        "http://localhost/jwks",
        "http://[::1]/k",
    ):
        assert _problems(RuntimeSettings, **rs256, jwt_jwks_url=url) == [], url
    for url in ("http://id.example/jwks.json", "http://10.0.0.7/jwks", "ftp://id.example/jwks"):
        assert _problems(RuntimeSettings, **rs256, jwt_jwks_url=url) == [
            "JWT_JWKS_URL: expected an https:// URL (plain http only to this machine)"
        ], url


def test_kafka_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    """A wrong path is one line naming the variable at start, not a traceback when the first client connects."""
    ca = private_ca(tmp_path)
    tls = {"kafka_security_protocol": "SSL"}
    assert _problems(RuntimeSettings, **tls, kafka_ssl_cafile=ca.ca_file) == []
    [missing] = _problems(RuntimeSettings, **tls, kafka_ssl_cafile=tmp_path / "absent.pem")
    assert missing.startswith("KAFKA_SSL_CAFILE: ") and "file" in missing
    (tmp_path / "notes.txt").write_text("not a certificate")
    [not_pem] = _problems(RuntimeSettings, **tls, kafka_ssl_cafile=tmp_path / "notes.txt")
    assert not_pem.startswith("KAFKA_SSL_CAFILE: ") and "holds no PEM certificate" in not_pem
    problems = _problems(
        RuntimeSettings, **tls, kafka_ssl_certfile=tmp_path / "client.crt", kafka_ssl_keyfile=tmp_path / "client.key"
    )
    assert [p.split(":")[0] for p in problems] == ["KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"]
    result = _start({**GOOD, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(tmp_path / "absent.pem")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("configuration error: KAFKA_SSL_CAFILE: "), result.stderr


def test_the_ehlo_name_is_fully_qualified_by_default() -> None:
    """RFC 5321 section 4.1.1.1: "collabkare-notifier" (the old default) is held against us by Postfix and filters."""
    good = {name.lower(): value for name, value in GOOD.items()}
    sender = NotifierSettings.model_validate({**good, "smtp_from": "Riverside <no-reply@mail.riverside.example>"})
    assert sender.ehlo_name == "mail.riverside.example"
    named = NotifierSettings.model_validate({**good, "smtp_local_hostname": "relay-client.hospital.example"})
    assert named.ehlo_name == "relay-client.hospital.example"
    for literal in ("[192.0.2.1]", "[IPv6:2001:db8::1]"):
        assert NotifierSettings.model_validate({**good, "smtp_local_hostname": literal}).ehlo_name == literal


def test_an_ehlo_name_that_is_not_fully_qualified_is_refused_at_start() -> None:
    """The README says SMTP_LOCAL_HOSTNAME must be fully qualified; `localhost` started, and relays refuse it."""
    good = {name.lower(): value for name, value in GOOD.items()}
    for name in ("notifier", "bad name.example.org", "-x.example.org", "x.example."):
        with pytest.raises(ValidationError, match="expected a fully qualified domain name"):
            NotifierSettings.model_validate({**good, "smtp_local_hostname": name})
    result = _start({**GOOD, "SMTP_LOCAL_HOSTNAME": "localhost"}, "notifier")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("configuration error: SMTP_LOCAL_HOSTNAME: expected a fully"), result.stderr


def test_message_ids_are_made_under_smtp_froms_domain() -> None:
    """Not under SMTP_LOCAL_HOSTNAME: the Message-ID names the sender's domain, which the From: header shows."""
    good = {name.lower(): value for name, value in GOOD.items()}
    assert NotifierSettings.model_validate(good).sender_domain == "collabkare.example"
    settings = NotifierSettings.model_validate(
        {
            **good,
            "smtp_from": "Riverside <no-reply@mail.riverside.example>",
            "smtp_local_hostname": "relay-client.hospital.example",
        }
    )
    [subscription] = subscribers.routes(settings)
    queue = subscription.handlers["InviteRequested"]
    assert isinstance(queue, handlers.QueueDeliveries) and queue.message_id_domain == "mail.riverside.example"


def test_an_smtp_login_goes_only_over_tls_unless_the_relay_is_on_this_machine() -> None:
    login = {"smtp_username": "notifier", "smtp_password": "s3cret"}
    for host in ("127.0.0.1", "localhost", "::1"):
        assert _problems(NotifierSettings, smtp_host=host, **login) == [], host
    assert _problems(NotifierSettings, smtp_host="mail.example", smtp_starttls=True, **login) == []
    assert _problems(NotifierSettings, smtp_host="mail.example", smtp_tls=True, smtp_port=465, **login) == []
    assert _problems(NotifierSettings, smtp_host="mail.example") == [], "no login: plain SMTP stays possible"
    [problem] = _problems(NotifierSettings, smtp_host="mail.example", **login)
    assert problem.startswith("SMTP_USERNAME and SMTP_PASSWORD: sent only over TLS; set SMTP_STARTTLS or SMTP_TLS")


def test_numbers_must_be_finite() -> None:
    """`inf` would wait forever (a timeout) or overflow the first timedelta made of it (INBOX_RETENTION_DAYS)."""
    result = _start({**GOOD, "SMTP_TIMEOUT_SECONDS": "inf"}, "notifier")  # as a pod starts: one line, exit 2
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("configuration error: SMTP_TIMEOUT_SECONDS: "), line
    for variable in ("SMTP_TIMEOUT_SECONDS", "SMTP_RETRY_MAX_SECONDS", "KAFKA_SEND_TIMEOUT_SECONDS"):
        for value in ("inf", "nan", "-inf"):
            [problem] = _problems(NotifierSettings, **{variable.lower(): value})
            assert problem.startswith(f"{variable}: "), (variable, value, problem)
    [problem] = _problems(RuntimeSettings, inbox_retention_days=float("inf"))
    assert problem == "INBOX_RETENTION_DAYS: Input should be a finite number"


def test_the_backpressure_pause_stays_below_kafkas_max_poll_interval() -> None:
    """A consumer that holds its batch longer than max.poll.interval.ms is taken for dead: its partitions move to
    another pod, which pauses in turn."""
    limit = MAX_POLL_INTERVAL_SECONDS - 60  # a minute left to apply the batch after the pause
    assert _problems(NotifierSettings, pending_wait_max_seconds=limit) == []
    result = _start({**GOOD, "PENDING_WAIT_MAX_SECONDS": f"{limit + 1:g}"}, "notifier")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"configuration error: PENDING_WAIT_MAX_SECONDS: expected at most {limit:g} s: the consumers' max poll "
        f"interval ({MAX_POLL_INTERVAL_SECONDS:g} s) less a minute"
    ), line


def test_the_pause_is_checked_against_the_interval_the_consumers_are_given() -> None:
    settings = NotifierSettings.model_validate({name.lower(): value for name, value in GOOD.items()})
    [subscription] = subscribers.routes(settings)
    context = ConsumerContext("notifier", KafkaBroker(settings.kafka_bootstrap_servers), settings.topic, Metrics("t"))
    route = BatchConsumer(subscription, context).route(
        settings.consumer_batch_size, settings.kafka_session_timeout_seconds
    )
    assert route.kwargs["max_poll_interval_ms"] == MAX_POLL_INTERVAL_SECONDS * 1000


def test_consumers_get_the_session_timeout_and_heartbeat_a_third_of_it() -> None:
    """Kafka's default (10 s) unless KAFKA_SESSION_TIMEOUT_SECONDS says otherwise; the embedded broker makes every
    join wait half of it, so the local stack asks for 3 s."""
    for env, session_ms in (({}, 10_000), ({"KAFKA_SESSION_TIMEOUT_SECONDS": "3"}, 3_000)):
        settings = NotifierSettings.model_validate({name.lower(): value for name, value in {**GOOD, **env}.items()})
        [subscription] = subscribers.routes(settings)
        context = ConsumerContext(
            "notifier", KafkaBroker(settings.kafka_bootstrap_servers), settings.topic, Metrics("t")
        )
        route = BatchConsumer(subscription, context).route(
            settings.consumer_batch_size, settings.kafka_session_timeout_seconds
        )
        assert (route.kwargs["session_timeout_ms"], route.kwargs["heartbeat_interval_ms"]) == (
            session_ms,
            session_ms // 3,
        )
    for bad in ("0.5", "1801", "nan"):
        assert _problems(RuntimeSettings, kafka_session_timeout_seconds=bad), bad


def test_the_first_retry_delay_is_at_most_the_cap() -> None:
    assert _problems(NotifierSettings, smtp_retry_base_seconds=600, smtp_retry_max_seconds=600) == []
    result = _start({**GOOD, "SMTP_RETRY_BASE_SECONDS": "900", "SMTP_RETRY_MAX_SECONDS": "600"}, "notifier")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "configuration error: SMTP_RETRY_BASE_SECONDS: expected at most SMTP_RETRY_MAX_SECONDS"
    )


def test_kafka_bootstrap_servers_are_host_port_pairs_checked_at_start() -> None:
    """Found by an operator's review: `PLAINTEXT://kafka:9092` (a broker's listener, copied) or a port that is not
    a number started a pod that answered ready and never published or consumed anything."""
    for good in ("127.0.0.1:9092", "kafka-0.kafka:9092, kafka-1.kafka:9093", "[::1]:9092", "kafka"):
        assert _problems(RuntimeSettings, kafka_bootstrap_servers=good) == [], good
    for bad, says in (
        ("PLAINTEXT://127.0.0.1:9092", "without a scheme"),
        ("localhost:abc", "a port from 1 to 65535"),
        ("kafka:9092,", "a port from 1 to 65535"),
        (":9092", "a port from 1 to 65535"),
        ("kafka:70000", "a port from 1 to 65535"),
    ):
        [problem] = _problems(RuntimeSettings, kafka_bootstrap_servers=bad)
        assert problem.startswith("KAFKA_BOOTSTRAP_SERVERS: expected host:port[,host:port]") and says in problem, bad


def test_settings_that_would_outlast_the_grace_period_or_overflow_are_refused_at_start() -> None:
    [problem] = _problems(RuntimeSettings, kafka_send_timeout_seconds=60)
    assert problem.startswith("KAFKA_SEND_TIMEOUT_SECONDS: ") and "15" in problem
    [problem] = _problems(RuntimeSettings, inbox_retention_days=1e9)
    assert problem.startswith("INBOX_RETENTION_DAYS: ") and "3650" in problem
