# syntax=docker/dockerfile:1.7
# SCNS Conductor: one image for every service (`scns run registry|scheduler|executor|gateway|
# reconciler`). Multi-arch: python:3.11-slim is an official multi-arch image and every runtime
# dependency has manylinux wheels for both aarch64 and x86_64, whose hashes are all in
# requirements.lock, so
#   docker buildx build --platform linux/arm64,linux/amd64 -t REGISTRY/scns-conductor:TAG .
# works unchanged. No step downloads anything arch-specific.
#
# Stages: build (venv) -> base (runtime user and venv) -> dev (Tilt live_update target, opt-in)
#         -> runtime (the default target, last in the file).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the runtime dependencies and the project --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from the lock file alone, so a code change reuses this layer.
# requirements.lock (`make lock`) pins every runtime dependency and every one they pull in, with
# the sha256 of each file PyPI has for that version (aarch64 and x86_64 wheels alike).
# --require-hashes: a file whose hash is not in the lock (a re-uploaded or tampered release, a
# mirror's own build) fails the build. --no-deps: the lock is the whole closure, so pip resolves
# nothing itself and cannot pull in an unpinned package. --only-binary: wheels exist for both
# arches; the slim image has no compiler, and we want a missing wheel to fail loudly rather
# than try to build from source.
COPY requirements.lock ./
RUN pip install --require-hashes --only-binary=:all: --no-deps -r requirements.lock

# The project itself: runtime only (no local/test/dev extras). --no-deps: installed above.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
 && python -m compileall -q /opt/venv

# ---- base: what every runtime image shares -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
LABEL org.opencontainers.image.title="scns-conductor" \
      org.opencontainers.image.description="SCNS Conductor: a batch job scheduler for CPU clusters" \
      org.opencontainers.image.licenses="Apache-2.0"
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes (bytecode is compiled
# at build time). PYTHONUNBUFFERED: log lines reach `kubectl logs` at once.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SCNS_DATA_DIR=/var/lib/scns \
    SCNS_LOG_FORMAT=json
# A fixed uid/gid (10001) so Kubernetes' runAsUser/fsGroup and the image agree.
# --no-log-init: a high uid would otherwise grow /var/log/lastlog to a huge sparse file.
RUN groupadd --gid 10001 scns \
 && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /home/scns --create-home \
        --shell /usr/sbin/nologin scns \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/scns
COPY --from=build /opt/venv /opt/venv
WORKDIR /home/scns

# ---- dev: Tilt's live_update target (`docker_build(..., target='dev')`) ----------------------------
# The code also lives in /app, owned by the runtime user and first on PYTHONPATH, so Tilt can
# sync shared/ and services/ into a running container; scns-dev-restart reruns the service
# when Tilt writes its trigger file (the last live_update step). Never used in production.
FROM base AS dev
ENV PYTHONPATH=/app \
    SCNS_DEV_RESTART_FILE=/tmp/.scns-restart
COPY --chown=10001:10001 shared /app/shared
COPY --chown=10001:10001 services /app/services
COPY --chmod=0755 <<'EOF' /usr/local/bin/scns-dev-restart
#!/opt/venv/bin/python
"""Dev only: run a command; rerun it whenever $SCNS_DEV_RESTART_FILE changes.

SIGTERM/SIGINT are forwarded to the command (graceful shutdown still works) and the wrapper
exits with the command's exit status when it ends on its own.
"""
import os
import signal
import subprocess
import sys

TRIGGER = os.environ.get("SCNS_DEV_RESTART_FILE", "/tmp/.scns-restart")
stopping = False
child = None


def stamp():
    try:
        return os.stat(TRIGGER).st_mtime_ns
    except FileNotFoundError:
        return None


def forward(signum, _frame):
    global stopping
    stopping = True
    if child is not None and child.poll() is None:
        child.send_signal(signum)


signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
seen = stamp()
while True:
    child = subprocess.Popen(sys.argv[1:])
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if not stopping and stamp() != seen:
            seen = stamp()
            print("scns-dev-restart: code changed, restarting", file=sys.stderr, flush=True)
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            code = None
            break
    if code is not None:
        sys.exit(128 - code if code < 0 else code)
EOF
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["scns-dev-restart", "scns"]
CMD ["run", "registry"]

# ---- runtime: the production image (default target) -----------------------------------------------
FROM base AS runtime
USER 10001:10001
ENTRYPOINT ["scns"]
CMD ["run", "registry"]
