# syntax=docker/dockerfile:1

# Build stage: install statekeeper with its server extra into /install.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
# The image installs this checkout; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[server]"

# Runtime stage: only the installed packages, run as an unprivileged user.
FROM python:3.12-slim
RUN groupadd --system --gid 10001 statekeeper \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin statekeeper \
    && mkdir /data \
    && chown statekeeper:statekeeper /data
COPY --from=build /install /usr/local
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENV STATEKEEPER_LISTEN=0.0.0.0:50051 \
    STATEKEEPER_STORE=file:/data/statekeeper.db \
    PYTHONUNBUFFERED=1
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["statekeeper", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["statekeeper"]
CMD ["serve"]
