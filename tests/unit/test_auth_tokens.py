"""Token verification: RS256 against a JWKS served over real HTTP on loopback, and what is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm

from services.runtime.auth import CLOCK_SKEW_SECONDS, TokenVerifier, mint_token
from services.runtime.problems import Problem
from tests.tls import PrivateCA, private_ca

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRACTICE = uuid.uuid4()


def _serve_jwks(tls: ssl.SSLContext | None = None, fetches: list[str] | None = None) -> tuple[HTTPServer, str]:
    """The key set (kid k1) on loopback; each GET is appended to `fetches` when given."""
    public = json.loads(RSAAlgorithm.to_jwk(KEY.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if fetches is not None:
                fetches.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    server, url = _serve_jwks()
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def https_jwks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PrivateCA]]:
    """The key set over HTTPS with a certificate from a private CA, as a hospital's identity provider may serve it."""
    ca = private_ca(tmp_path_factory.mktemp("jwks-tls"))
    server, url = _serve_jwks(ca.server_context())
    yield url, ca
    server.shutdown()
    server.server_close()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "staff-9",
        "roles": ["admin"],
        "practice_id": str(PRACTICE),
        "iss": "collabkare",
        "aud": "collabkare-api",
        "iat": now,
        "exp": now + 600,
    }
    return {**claims, **overrides}


def test_rs256_token_from_the_key_set_is_accepted(jwks_url: str) -> None:
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=jwks_url)
    token = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})
    principal = verifier.verify(token)
    assert principal.subject == "staff-9" and principal.practice_id == PRACTICE and "admin" in principal.roles


def test_an_rs256_token_naming_no_key_is_checked_against_the_sets_only_key(jwks_url: str) -> None:
    """Found by a review: a token without a kid (it is optional; some identity providers omit it) was refused
    though the key set holds a single key."""
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=jwks_url)
    assert verifier.verify(jwt.encode(_claims(), KEY, algorithm="RS256")).subject == "staff-9"
    with pytest.raises(Problem) as refused:
        verifier.verify(jwt.encode(_claims(), OTHER_KEY, algorithm="RS256"))
    assert refused.value.status == 401


@pytest.mark.parametrize("ahead", [2, CLOCK_SKEW_SECONDS - 5], ids=["a second or two", "within the allowance"])
def test_a_token_from_an_identity_provider_whose_clock_is_ahead_is_accepted(jwks_url: str, ahead: int) -> None:
    """Found by a review: PyJWT refuses a token issued after its own clock's now; with no allowance, a provider a
    second ahead of the pod had its fresh tokens answered 401 until the pod's clock caught up."""
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=jwks_url)
    issued = int(time.time()) + ahead
    token = jwt.encode(_claims(iat=issued, exp=issued + 600), KEY, algorithm="RS256", headers={"kid": "k1"})
    assert verifier.verify(token).subject == "staff-9"


def test_a_token_past_its_time_by_more_than_the_allowance_is_refused(jwks_url: str) -> None:
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=jwks_url)
    expired = int(time.time()) - CLOCK_SKEW_SECONDS - 5
    token = jwt.encode(_claims(iat=expired - 600, exp=expired), KEY, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Problem) as refused:
        verifier.verify(token)
    assert (refused.value.status, refused.value.detail) == (401, "The token has expired.")


def _hs256_signed_with(secret: bytes) -> str:
    def segment(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = segment(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    signing_input = header + b"." + segment(json.dumps(_claims()).encode())
    return (signing_input + b"." + segment(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()


@pytest.mark.parametrize(
    "case",
    ["signed by another key", "hs256 with the public key as secret", "unknown kid", "missing exp"],
)
def test_rs256_refusals(jwks_url: str, case: str) -> None:
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=jwks_url)
    if case == "signed by another key":
        token = jwt.encode(_claims(), OTHER_KEY, algorithm="RS256", headers={"kid": "k1"})
    elif case == "hs256 with the public key as secret":
        # The classic confusion attack: HMAC keyed with the public key's PEM, which a verifier taking the algorithm
        # from the token would check against that very key. PyJWT refuses to sign so: the token is built by hand.
        token = _hs256_signed_with(KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    elif case == "unknown kid":
        token = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k2"})
    else:
        claims = _claims()
        del claims["exp"]
        token = jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Problem) as refused:
        verifier.verify(token)
    assert refused.value.status == 401


def test_made_up_kids_do_not_make_every_request_fetch_the_key_set() -> None:
    """A kid the cached set lacks refetches it once (a rotated key), then not again within the cooldown."""
    fetches: list[str] = []
    server, url = _serve_jwks(fetches=fetches)
    try:
        verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=url)
        assert verifier.verify(jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})).subject
        assert len(fetches) == 1
        for attempt in range(50):
            made_up = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": f"made-up-{attempt}"})
            with pytest.raises(Problem) as refused:
                verifier.verify(made_up)
            assert refused.value.status == 401
        assert len(fetches) <= 2, f"{len(fetches)} fetches of the key set for 50 made-up kids"
        assert verifier.verify(jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})).subject
    finally:
        server.shutdown()
        server.server_close()


def test_a_key_set_behind_a_private_ca_is_trusted_through_its_ca_file(https_jwks: tuple[str, PrivateCA]) -> None:
    url, ca = https_jwks
    token = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})
    verifier = TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=url, jwks_ca_file=ca.ca_file)
    assert verifier.verify(token).subject == "staff-9"


def test_an_unreachable_or_untrusted_key_set_is_a_503_not_a_401(https_jwks: tuple[str, PrivateCA]) -> None:
    """401 tells a client its token is bad (it signs the user out); the identity provider being away is not that."""
    url, _ = https_jwks
    token = jwt.encode(_claims(), KEY, algorithm="RS256", headers={"kid": "k1"})
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}/jwks.json"
    for where in (url, nobody):  # a certificate the system does not trust; nothing listening
        with pytest.raises(Problem) as unavailable:
            TokenVerifier("RS256", "collabkare", "collabkare-api", jwks_url=where).verify(token)
        assert unavailable.value.status == 503 and unavailable.value.headers == {"Retry-After": "5"}


def test_hs256_roundtrip_and_claims() -> None:
    secret = "s" * 40
    verifier = TokenVerifier("HS256", "collabkare", "collabkare-api", secret=secret)
    token = mint_token(secret, "p1", ["patient"], email="p@example.com")
    principal = verifier.verify(token)
    assert principal.email == "p@example.com" and principal.practice_id is None
    bad_roles = jwt.encode(_claims(roles="admin"), secret, algorithm="HS256")
    with pytest.raises(Problem):
        verifier.verify(bad_roles)


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("abc.def.ghi", "The token is not valid: it is not a well-formed JWT."),
        ("not a token", "The token is not valid: it is not a well-formed JWT."),
        (
            mint_token("t" * 40, "p1", ["admin"], practice_id=PRACTICE),
            "The token is not valid: its signature does not verify.",
        ),
    ],
    ids=["garbage-segments", "no-segments", "another-secret"],
)
def test_a_broken_token_is_refused_in_words_a_user_can_read(token: str, detail: str) -> None:
    """A garbage token's 401 quoted the library: "Invalid header string: 'utf-8' codec can't decode byte 0xb7"."""
    verifier = TokenVerifier("HS256", "collabkare", "collabkare-api", secret="s" * 40)
    with pytest.raises(Problem) as refused:
        verifier.verify(token)
    assert (refused.value.status, refused.value.detail) == (401, detail)


def test_an_overlong_subject_is_refused() -> None:
    secret = "s" * 40
    verifier = TokenVerifier("HS256", "collabkare", "collabkare-api", secret=secret)
    with pytest.raises(Problem) as refused:
        verifier.verify(mint_token(secret, "x" * 201, ["admin"], practice_id=PRACTICE))
    assert refused.value.status == 401 and "sub" in refused.value.detail


@pytest.mark.parametrize("subject", ["staff\u0000one", "line\nbreak", "tab\there"])
def test_a_subject_with_control_characters_is_refused(subject: str) -> None:
    """The subject is stored as the actor of every change: PostgreSQL cannot store U+0000 (it was a 500)."""
    secret = "s" * 40
    verifier = TokenVerifier("HS256", "collabkare", "collabkare-api", secret=secret)
    with pytest.raises(Problem) as refused:
        verifier.verify(mint_token(secret, subject, ["admin"], practice_id=PRACTICE))
    assert refused.value.status == 401 and "printable" in refused.value.detail


def test_problem_extensions_cannot_clobber_standard_members() -> None:
    with pytest.raises(ValueError, match="status"):
        Problem(409, "conflict", status="rejected")
    assert Problem(409, "conflict", current_status="rejected").extensions == {"current_status": "rejected"}


def test_the_clis_expired_token_is_refused_at_once(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """A probe: `collabkare token … --minutes 0` ("0: expired") still passed for the minute of clock skew allowed."""
    from collabkare import cli

    secret = "c" * 40
    monkeypatch.setenv("JWT_SECRET", secret)
    patient = ["--patient", str(uuid.uuid4()), "--email", "p@example.com"]
    assert cli.main(["token", "patient", *patient, "--minutes", "0"]) == 0
    token = capsys.readouterr().out.strip()
    with pytest.raises(Problem) as refused:
        TokenVerifier("HS256", "collabkare", "collabkare-api", secret=secret).verify(token)
    assert "expired" in refused.value.detail
