"""The `collabkare` command: tokens, platform seeds, migrations, the local stack and the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from collabkare.stack.errors import StackError
from collabkare.stack.settings_file import default_workdir, read_stack_env
from services.runtime.auth import CLOCK_SKEW_SECONDS, STAFF_ROLES, mint_token
from services.runtime.logging import configure_logging, get_logger
from services.runtime.settings import LOG_LEVELS


def _no_stack(name: str) -> StackError:
    """The error of a setting neither in the environment nor in a running stack's stack.env, saying where it looked:
    a stack started with its own COLLABKARE_STACK_DIR is found only with the same value in this shell."""
    return StackError(
        f"{name} is not set and no local stack is running in {default_workdir()}/ (start one with `make up`; one "
        "started with COLLABKARE_STACK_DIR set needs the same COLLABKARE_STACK_DIR here)"
    )


def _setting(name: str) -> str:
    """From the environment, else from the running local stack's stack.env (var/stack/, or COLLABKARE_STACK_DIR)."""
    value = os.environ.get(name) or read_stack_env().get(name)
    if not value:
        raise _no_stack(name)
    return value


def cmd_token(args: argparse.Namespace) -> int:
    secret = _setting("JWT_SECRET")
    # 0 minutes: expired now, past the clock skew the services allow (a token a minute old still passed).
    ttl = args.minutes * 60 if args.minutes else -(CLOCK_SKEW_SECONDS + 60)
    if args.kind == "staff":
        subject = args.subject or f"staff-{args.role}"
        token = mint_token(secret, subject, [args.role], practice_id=args.practice, ttl_seconds=ttl)
    else:
        token = mint_token(secret, str(args.patient), ["patient"], email=args.email, name=args.name, ttl_seconds=ttl)
    print(token)
    return 0


def _kafka() -> tuple[str, str]:
    """The broker and topic prefix, both from the environment or both from the running stack: a prefix exported
    in this shell must not send a seed to topics the local stack's services do not read."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return bootstrap, os.environ.get("KAFKA_TOPIC_PREFIX", "")
    stack = read_stack_env()
    if not stack.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise _no_stack("KAFKA_BOOTSTRAP_SERVERS")
    return stack["KAFKA_BOOTSTRAP_SERVERS"], stack.get("KAFKA_TOPIC_PREFIX", "")


def cmd_seed(args: argparse.Namespace) -> int:
    from collabkare.seeding import publish_patient, publish_practice, seeded_patient_id

    bootstrap, prefix = _kafka()
    if args.kind == "practice":
        asyncio.run(publish_practice(bootstrap, prefix, args.id, args.name))
        print(f"PracticeRegistered {args.id} ({args.name})")
    else:
        patient_id = asyncio.run(
            publish_patient(
                bootstrap,
                prefix,
                args.email,
                locale=args.locale,
                patient_id=args.id or seeded_patient_id(args.email),
                name=args.name,
            )
        )
        token = f"collabkare token patient --patient {patient_id} --email {args.email}"
        print(f"PatientRegistered {patient_id}  (the patient id; a token for them: `{token}`)")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """The platform deletes a patient's account or a practice: a tombstone (the key, no value) on its topic."""
    from collabkare.seeding import publish_tombstone, seeded_patient_id

    if args.kind == "patient" and (args.email is None) == (args.id is None):
        print("collabkare: delete patient takes an email or --id, one of them", file=sys.stderr)
        return 2
    bootstrap, prefix = _kafka()
    if args.kind == "practice":
        asyncio.run(publish_tombstone(bootstrap, prefix, "platform.practices.v1", args.id))
        print(f"practice {args.id} deleted (a tombstone on platform.practices.v1)")
    else:
        patient_id = args.id or seeded_patient_id(args.email)
        asyncio.run(publish_tombstone(bootstrap, prefix, "platform.patients.v1", patient_id))
        print(f"patient {patient_id} deleted (a tombstone on platform.patients.v1; `seed patient` registers again)")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from collabkare.services import MIGRATION_PLANS
    from services.runtime.database import TRANSIENT_ERRORS
    from services.runtime.migrations import migrate
    from services.runtime.settings import PLACEHOLDER

    url = (
        os.environ.get("MIGRATION_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or read_stack_env().get("MIGRATION_DATABASE_URL")
    )
    if not url:
        raise StackError(
            "MIGRATION_DATABASE_URL (or DATABASE_URL) is not set and no local stack is running: set it to a role "
            "that may create the service's schema and role"
        )
    if PLACEHOLDER in url:  # the Job assembles it from the overlay's DATABASE_HOST
        raise StackError(
            f"MIGRATION_DATABASE_URL: still the overlay's {PLACEHOLDER} placeholder; set DATABASE_HOST in the overlay"
        )
    variable = f"{args.service.upper()}_DB_PASSWORD"
    password = os.environ.get(variable)
    if password is not None and not (password.isascii() and password.isprintable()):
        raise StackError(f"{variable}: expected printable ASCII (the role's SCRAM verifier is computed here)")
    try:
        applied = asyncio.run(migrate(url, MIGRATION_PLANS[args.service], role_password=password))
    except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as error:
        # One JSON line, as a service's service.start_failed, not a traceback of 54 (what `kubectl logs` of a
        # failed migration Job shows first); where the database is, never the credentials.
        where = urlsplit(url)
        get_logger("collabkare.migrate").error(
            "migrate.failed",
            service=args.service,
            database=f"{where.hostname}:{where.port or 5432}{where.path}",
            error=repr(error)[:300],
        )
        return 3
    print(f"{args.service}: " + (", ".join(applied) if applied else "up to date"))
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from collabkare.stack.local import run_foreground

    return run_foreground()


def cmd_demo(args: argparse.Namespace) -> int:
    from collabkare.demo import run_demo

    return run_demo()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="collabkare", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    token = commands.add_parser("token", help="mint a development token (HS256, JWT_SECRET)")
    token_kinds = token.add_subparsers(dest="kind", required=True)
    staff = token_kinds.add_parser("staff")
    staff.add_argument("--practice", required=True, type=uuid.UUID)
    staff.add_argument("--role", required=True, help=f"one of {', '.join(sorted(STAFF_ROLES))}, or any other")
    staff.add_argument("--subject")
    patient = token_kinds.add_parser("patient")
    patient.add_argument("--patient", required=True, type=uuid.UUID)
    patient.add_argument("--email", required=True)
    patient.add_argument("--name", help="the name claim: how the patient's connection requests are shown to staff")
    for kind in (staff, patient):
        kind.add_argument("--minutes", type=int, default=8 * 60, help="valid this long (default 8 h; 0: expired)")
    token.set_defaults(handler=cmd_token)

    seed = commands.add_parser("seed", help="publish platform events (PracticeRegistered, PatientRegistered)")
    seed_kinds = seed.add_subparsers(dest="kind", required=True)
    practice = seed_kinds.add_parser("practice")
    practice.add_argument("id", type=uuid.UUID)
    practice.add_argument("name")
    seed_patient = seed_kinds.add_parser("patient")
    seed_patient.add_argument("email")
    seed_patient.add_argument("--locale", choices=["en", "es"], default="en")
    seed_patient.add_argument(
        "--id", type=uuid.UUID, help="the patient id (default: one derived from the email, the same every time)"
    )
    seed_patient.add_argument("--name")
    seed.set_defaults(handler=cmd_seed)

    delete = commands.add_parser("delete", help="publish a platform deletion (a tombstone) of a patient or practice")
    delete_kinds = delete.add_subparsers(dest="kind", required=True)
    delete_kinds.add_parser("practice").add_argument("id", type=uuid.UUID)
    delete_patient = delete_kinds.add_parser("patient")
    delete_patient.add_argument("email", nargs="?", help="as given to `seed patient` (its id is derived from it)")
    delete_patient.add_argument("--id", type=uuid.UUID, help="the patient id instead of the email")
    delete.set_defaults(handler=cmd_delete)

    migrate = commands.add_parser("migrate", help="create the service's role and schema and apply migrations")
    migrate.add_argument("service", choices=["connections", "invitations", "notifier"])
    migrate.set_defaults(handler=cmd_migrate)

    stack = commands.add_parser("stack", help="the local stack")
    stack.add_argument("action", choices=["up"])
    stack.set_defaults(handler=cmd_stack)

    demo = commands.add_parser("demo", help="start the stack, run the scenario, print it, stop")
    demo.set_defaults(handler=cmd_demo)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "WARNING").strip().upper()  # the services' LOG_LEVEL, in either case
    if level not in LOG_LEVELS:
        print(f"collabkare: LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {level!r}", file=sys.stderr)
        return 2
    # Logs go to stderr so that stdout carries only the answer (a token, an id) for scripts to use.
    configure_logging("collabkare-cli", level, stream=sys.stderr)
    try:
        return int(args.handler(args))
    except StackError as error:
        print(f"collabkare: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
