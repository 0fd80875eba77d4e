# vcl-worker image: the dispatcher, a host worker and Flower all run from it.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc pkg-config libvirt-dev libvirt-clients qemu-utils mariadb-client \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-cache-dir '.[monitoring]'
ENTRYPOINT ["vcl-worker"]
CMD ["--help"]
