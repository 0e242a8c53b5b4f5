"""Bearer JWTs: verification (HS256 dev secret or RS256 from a JWKS URL), roles, and the practice in the path."""

from __future__ import annotations

import os
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from fastapi import Depends, Path, Request
from pydantic import EmailStr, TypeAdapter

from services.runtime.logging import get_logger
from services.runtime.problems import Problem

log = get_logger(__name__)

STAFF_ROLES = frozenset({"front_desk", "practice_manager", "admin"})
PATIENT_ROLE = "patient"
# Subjects are recorded as actors (decided_by, requested_by) and carried in events, which bound them at 200.
MAX_SUBJECT_LENGTH = 200
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
# How far the identity provider's clock may be from ours: a token issued "in the future" by a clock a second ahead
# was refused (iat), as was one at its last second here. Its lifetime grows by as much at most.
CLOCK_SKEW_SECONDS = 60
_EMAIL: TypeAdapter[str] = TypeAdapter(EmailStr)


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    practice_id: uuid.UUID | None = None
    email: str | None = None
    name: str | None = None  # OpenID Connect's `name` claim: how a patient's requests are shown to staff


@dataclass(frozen=True)
class PatientIdentity:
    """The patient a patient token names: its `sub` (the patient id), its `email` (normalised) and `name`."""

    patient_id: uuid.UUID
    email: str
    name: str | None = None


class TokenVerifier:
    """Checks signature, algorithm, iss, aud and exp; never takes a key or algorithm from the token header."""

    def __init__(
        self,
        algorithm: str,
        issuer: str,
        audience: str,
        secret: str | None = None,
        jwks_url: str | None = None,
        jwks_ca_file: os.PathLike[str] | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.issuer = issuer
        self.audience = audience
        self._secret = secret
        self._jwks = None
        if jwks_url:
            trust = ssl.create_default_context(cafile=jwks_ca_file)
            # A token with a kid the cached set lacks refetches the set at most once per cooldown: tokens with
            # made-up kids must not turn every request into a call to the identity provider.
            self._jwks = jwt.PyJWKClient(
                jwks_url, cache_keys=True, lifespan=300, timeout=5, ssl_context=trust, cooldown_duration=30
            )

    def _key(self, token: str) -> Any:
        if self.algorithm == "HS256":
            return self._secret
        assert self._jwks is not None
        # The key set is ours (configured URL); the token's kid only picks a key from it. A token naming no key (kid
        # is optional; some identity providers leave it out) is checked against the set's one key, if it has one.
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            keys = self._jwks.get_signing_keys()
            if len(keys) != 1:
                raise jwt.InvalidTokenError(f"it names no key (kid) and the key set holds {len(keys)}")
            return keys[0].key
        return self._jwks.get_signing_key(kid).key

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": _REQUIRED_CLAIMS},
                leeway=CLOCK_SKEW_SECONDS,
            )
        except jwt.ExpiredSignatureError as error:
            raise _unauthorized("The token has expired.") from error
        except jwt.PyJWKClientConnectionError as error:
            # The identity provider is away, not the token wrong: a 401 would sign every user out.
            log.warning("jwks_unavailable", error=str(error))
            raise Problem(
                503,
                "The identity provider's key set could not be fetched; try again shortly.",
                headers={"Retry-After": "5"},
            ) from error
        except jwt.InvalidSignatureError as error:
            raise _unauthorized("The token is not valid: its signature does not verify.") from error
        except jwt.DecodeError as error:  # the library's text quotes codecs and byte offsets: no help to a user
            raise _unauthorized("The token is not valid: it is not a well-formed JWT.") from error
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as error:
            raise _unauthorized(f"The token is not valid: {error}.") from error
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise _unauthorized("The token's roles claim must be a list of strings.")
        practice = claims.get("practice_id")
        try:
            practice_id = uuid.UUID(str(practice)) if practice else None
        except ValueError as error:
            raise _unauthorized("The token's practice_id claim is not a UUID.") from error
        subject = str(claims["sub"])
        if not subject or len(subject) > MAX_SUBJECT_LENGTH or not subject.isprintable():
            raise _unauthorized(f"The token's sub claim must be 1 to {MAX_SUBJECT_LENGTH} printable characters.")
        name = claims.get("name")
        return Principal(
            subject, frozenset(roles), practice_id, claims.get("email"), name if isinstance(name, str) else None
        )


def mint_token(
    secret: str,
    subject: str,
    roles: list[str],
    *,
    practice_id: uuid.UUID | str | None = None,
    email: str | None = None,
    name: str | None = None,
    issuer: str = "collabkare",
    audience: str = "collabkare-api",
    ttl_seconds: int = 8 * 3600,
) -> str:
    """An HS256 token for development, demos and tests; production tokens come from the identity provider."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "roles": roles, "iss": issuer, "aud": audience, "iat": now}
    claims["exp"] = now + ttl_seconds
    if practice_id is not None:
        claims["practice_id"] = str(practice_id)
    if email is not None:
        claims["email"] = email
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def authenticated(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    return verifier.verify(token.strip())


def practice_staff(
    principal: Annotated[Principal, Depends(authenticated)],
    practice_id: Annotated[uuid.UUID, Path(description="The practice; must be the token's practice")],
) -> Principal:
    """Staff with a practice-management role, acting on their own practice."""
    if not principal.roles & STAFF_ROLES:
        needed = ", ".join(sorted(STAFF_ROLES))
        raise Problem(403, f"This action needs one of the practice-management roles: {needed}.")
    if principal.practice_id is None:
        raise Problem(403, "The token carries no practice_id claim: it names no practice whose staff it belongs to.")
    if principal.practice_id != practice_id:
        # Another practice's data is "not found", never "forbidden": existence is not leaked.
        raise Problem(404, "No such practice.")
    return principal


def patient(principal: Annotated[Principal, Depends(authenticated)]) -> PatientIdentity:
    """A patient token whose claims identify the patient. A token whose claims cannot is invalid (401), as one
    with a bad signature is; checked with the token, so before the body, and never a 422 about the request."""
    if PATIENT_ROLE not in principal.roles:
        raise Problem(403, "This action needs a patient token (role patient).")
    try:
        patient_id = uuid.UUID(principal.subject)
    except ValueError:
        raise _unauthorized("The patient token's sub claim must be a patient id (a UUID).") from None
    if not principal.email:
        raise _unauthorized("The patient token's email claim is required: it is the patient's address.")
    try:
        email = _EMAIL.validate_python(principal.email)
    except ValueError:
        raise _unauthorized("The patient token's email claim must be an email address.") from None
    return PatientIdentity(patient_id, email, principal.name)


StaffMember = Annotated[Principal, Depends(practice_staff)]
Patient = Annotated[PatientIdentity, Depends(patient)]


def check_access_before_body(request: Request) -> None:
    """Raise the 401/403/404 the route's access dependency would raise, for a body FastAPI could not parse.

    FastAPI parses a JSON body before it runs any dependency, so malformed JSON would get 422 even without a
    token, or with another practice's; every other request meets the access check first. Routes without one
    are left alone.
    """
    route = request.scope.get("route")
    calls = set(_dependency_calls(route.dependant)) if route is not None and hasattr(route, "dependant") else set()
    if practice_staff in calls:
        try:
            practice_id = uuid.UUID(str(request.path_params.get("practice_id")))
        except ValueError:
            return  # the path's own 422 names it
        practice_staff(authenticated(request), practice_id)
    elif patient in calls:
        patient(authenticated(request))
    elif authenticated in calls:
        authenticated(request)


def _dependency_calls(dependant: Any) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _dependency_calls(dependency)
