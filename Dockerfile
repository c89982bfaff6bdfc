# shopstream: one image for bootstrap, topics, feeder and workers.
#
# Stage 1 compiles the engine's hot modules with Cython (shopstream/compiled.py: the same code
# without the interpreter's dispatch per bytecode; scripts/compile.py). The compiler stays in
# this stage; the image gets the extensions and their manifest. `--build-arg
# SHOPSTREAM_COMPILED=0` builds an image that runs the sources.
FROM python:3.11.7-slim-bookworm AS compiled
ARG SHOPSTREAM_COMPILED=1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY deploy/constraints.txt deploy/constraints.txt
RUN case "$SHOPSTREAM_COMPILED" in 0|1) ;; \
      *) echo "SHOPSTREAM_COMPILED must be 1 (compile the engine) or 0 (the sources), not '$SHOPSTREAM_COMPILED'" >&2; \
         exit 2 ;; \
    esac \
 && mkdir /out \
 && if [ "$SHOPSTREAM_COMPILED" = 1 ]; then \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && pip install -c deploy/constraints.txt cython "setuptools>=65"; \
    fi
COPY scripts/compile.py scripts/compile.py
COPY shopstream shopstream
RUN if [ "$SHOPSTREAM_COMPILED" = 1 ]; then \
      python scripts/compile.py --package shopstream && cp shopstream/*.so shopstream/compiled.json /out/; \
    fi

FROM python:3.11.7-slim-bookworm
ARG SHOPSTREAM_COMPILED=1
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /app
# Dependencies first (cached layer), at the exact versions the tests ran with.
COPY deploy/constraints.txt deploy/constraints.txt
# confluent-kafka: SHOPSTREAM_KAFKA_CLIENT=confluent (the data path on librdkafka; its wheel bundles it).
RUN pip install -c deploy/constraints.txt river kafka-python crc32c python-snappy lz4 zstandard numpy prometheus-client \
    msgspec matplotlib tqdm confluent-kafka
COPY pyproject.toml README.md ./
COPY shopstream shopstream
COPY stream stream
COPY offline offline
COPY cli cli
# The extensions beside the sources they were compiled from (pyproject.toml installs them with
# them); importing shopstream checks each against its source's SHA-256 and refuses a mismatch.
COPY --from=compiled /out/ shopstream/
RUN pip install -c deploy/constraints.txt --no-deps . \
 && cd / && if [ "$SHOPSTREAM_COMPILED" = 1 ]; then python -c "from shopstream.compiled import require; require()"; fi \
 && shopstream --version \
 && useradd --uid 10001 --create-home shopstream \
 && mkdir -p /artifacts /checkpoints /data \
 && chown shopstream /artifacts /checkpoints /data
USER shopstream
EXPOSE 9108
ENTRYPOINT []
CMD ["shopstream", "--help"]
