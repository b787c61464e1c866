# syntax=docker/dockerfile:1

# Build stage: install statekeeper with its server and publish extras into /install.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
# The image installs this checkout; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[server,publish]"

# Runtime stage: only the installed packages, run as an unprivileged user.
FROM python:3.12-slim
RUN groupadd --system --gid 10001 statekeeper \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin statekeeper \
    && mkdir /data /etc/statekeeper \
    && chown statekeeper:statekeeper /data
COPY --from=build /install /usr/local
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENV STATEKEEPER_LISTEN=0.0.0.0:50051 \
    STATEKEEPER_STORE=file:/data/statekeeper.db \
    PYTHONUNBUFFERED=1
EXPOSE 50051
# Health is open to every caller: the probe needs no token.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["statekeeper", "health", "--target", "127.0.0.1:50051"]
# The server listens on every interface, so every call but health needs a bearer token
# listed in a tokens file mounted (readable by uid 10001) at /etc/statekeeper/tokens.toml.
# The file holds only SHA-256 digests (`statekeeper token create --add-to tokens.toml`
# adds one and prints its token once) and is re-read when it changes; without it the
# container stops at start, naming the missing file. Other authentication replaces the
# command: `serve --auth-jwt-keys FILE`, or `serve --tls-cert ... --auth-mtls-permissions
# FILE`; and only on a network that is itself trusted, `serve --insecure-no-auth`.
ENTRYPOINT ["statekeeper"]
CMD ["serve", "--auth-tokens-file", "/etc/statekeeper/tokens.toml"]
