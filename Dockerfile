# shopstream: one image for bootstrap, topics, feeder and workers.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
# Dependencies first (cached layer), at the exact versions the tests ran with.
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip install -c deploy/constraints.txt river kafka-python crc32c numpy prometheus-client msgspec matplotlib tqdm
COPY pyproject.toml README.md ./
COPY shopstream shopstream
COPY stream stream
COPY offline offline
COPY cli cli
RUN pip install -c deploy/constraints.txt --no-deps . \
 && useradd --uid 10001 --create-home shopstream \
 && mkdir -p /artifacts /checkpoints /data \
 && chown shopstream /artifacts /checkpoints /data
USER shopstream
EXPOSE 9108
ENTRYPOINT []
CMD ["shopstream", "--help"]
