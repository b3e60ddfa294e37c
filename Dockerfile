# dialguard as a container: `docker compose up` builds it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid, so volumes and file permissions are the same on every host.
RUN useradd --system --uid 10001 --home-dir /var/lib/dialguard --create-home dialguard

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /src

WORKDIR /var/lib/dialguard
USER dialguard

# In-container defaults; docker-compose.yml overrides the addresses that must be reachable from
# other containers. The admin API and /readyz stay on loopback unless told otherwise, which is
# also what the health check below calls.
ENV DIALGUARD_DATA_DIR=/var/lib/dialguard \
    DIALGUARD_API_LISTEN=127.0.0.1:8090 \
    DIALGUARD_METRICS_LISTEN=0.0.0.0:9108

EXPOSE 8090 9108

# /readyz answers 200 only once dialguard has migrated, connected to ARI and reconciled parked
# channels. python is the one client sure to be in a slim image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8090/readyz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["dialguard"]
CMD ["serve"]
