# syntax=docker/dockerfile:1
# One image for the three services and their migrations: `connections`, `invitations`, `notifier` or
# `migrate <service>` as the argument (see deploy/docker/entrypoint.sh). Build: docker build -t <image>:<tag> .
# Both stages use the same base; a release pins it by digest in both FROM lines (python:3.11-slim@sha256:…).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Wheels only, every file checked against the hashes in the lock: nothing is compiled, no build tools needed.
# The lock holds the runtime dependencies only (no embedded PostgreSQL, broker or SMTP catcher, no test tools).
COPY deploy/requirements-runtime.lock /tmp/requirements-runtime.lock
RUN python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --require-hashes --only-binary=:all: --no-deps \
        -r /tmp/requirements-runtime.lock
COPY schemas/ /app/schemas/
COPY services/ /app/services/
COPY collabkare/ /app/collabkare/
COPY deploy/docker/entrypoint.sh /app/entrypoint.sh
# Compiled once here, so a read-only root filesystem costs nothing at start-up.
RUN python -m compileall -q /app /opt/venv

FROM python:3.11-slim
LABEL org.opencontainers.image.title="collabkare-patient-connections" \
      org.opencontainers.image.description="CollabKare connections, invitations and notifier services"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
# pip and setuptools are not needed to run anything; without them the final stage holds no installer at all.
RUN python -m pip uninstall -y -q pip setuptools wheel 2>/dev/null || true \
    && groupadd --system --gid 10001 collabkare \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin collabkare
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness of the HTTP process only (Kubernetes uses its own probes: /healthz, /readyz).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["--help"]
