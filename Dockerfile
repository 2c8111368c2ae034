# OMNIXAN LB, the reverse proxy, in a container (docs/deploy.md).
#
# NOT BUILT IN THIS PROJECT'S CI: no container registry is reachable where it runs, so the base
# images cannot be pulled. tests/test_deploy.py only checks what is written here (a non-root USER,
# the HEALTHCHECK, ...). Build and run:
#   docker build -t omnixan-lb .
#   docker run -p 8080:8080 -v /srv/omnixan-lb:/etc/omnixan-lb:ro omnixan-lb
# with /srv/omnixan-lb/config.yaml listening on 0.0.0.0:8080 (127.0.0.1 inside a container is
# reachable from that container only) and admin.listen left on 127.0.0.1:9090 for the health check.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# -- build: the compiled wheel (mypyc, setup.py) and the wheels of its dependencies ------------
FROM ${PYTHON_IMAGE} AS build
# The image's Python ships its headers; the C compiler is the part missing for mypyc.
# (Debian's python3-dev would bring the headers of Debian's other Python, not this one's.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# OMNIXAN_LB_COMPILE=1: a failed compilation fails the build instead of leaving pure Python.
RUN OMNIXAN_LB_COMPILE=1 pip wheel --no-cache-dir --wheel-dir /wheels '.[server,redis]'

# -- runtime: the wheels installed, no compiler ------------------------------------------------
FROM ${PYTHON_IMAGE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'omnixan-lb[server,redis]' \
    && rm -rf /wheels \
    && omnixan-lb version \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin omnixan
# The config (and certificates) come from the host: mount a directory here.
VOLUME ["/etc/omnixan-lb"]
USER 10001:10001
# The proxy; the admin API (keep it unpublished, or set admin.token_env: docs/admin.md).
EXPOSE 8080 9090
# SIGTERM drains the requests in flight for up to drain_timeout (default 30 s): give
# `docker stop` at least that long (docker stop -t 35, stop_grace_period in compose).
STOPSIGNAL SIGTERM
# /healthz answers 200 while at least one backend is healthy, 503 otherwise (no curl in slim).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["omnixan-lb"]
CMD ["serve", "--config", "/etc/omnixan-lb/config.yaml"]
