# ot-gateway: the gateway (and its simulator) as one image. Used by docker-compose.yml.
#   docker build -t ot-gateway .
#   docker run --rm ot-gateway --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ot-gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY connectors ./connectors
COPY inventory ./inventory
COPY simulator ./simulator
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/ot-gateway --create-home otgw \
    && mkdir -p /etc/ot-gateway \
    && chown otgw:otgw /var/lib/ot-gateway

# The store (history + outbox) lives here; mount a volume so it survives container restarts.
VOLUME ["/var/lib/ot-gateway"]
USER otgw
WORKDIR /var/lib/ot-gateway
EXPOSE 8080
ENTRYPOINT ["ot-gateway"]
CMD ["run", "-c", "/etc/ot-gateway/gateway.yaml"]
