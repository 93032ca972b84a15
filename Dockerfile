# syntax=docker/dockerfile:1
# Build stage: build a wheel with the full toolchain, kept out of the final image.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --upgrade pip && pip install ".[redis]"

# Final stage: the venv and the default policies, a non-root user, nothing else.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_HOME=/var/lib/gateway \
    GATEWAY_POLICIES=/etc/gateway/policies
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --no-create-home gateway \
 && mkdir -p /var/lib/gateway /etc/gateway \
 && chown gateway:gateway /var/lib/gateway
COPY --from=build /opt/venv /opt/venv
COPY policies /etc/gateway/policies
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
