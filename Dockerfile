# The hub in one image, run exactly like the reference chat program's:
#   docker run -p 6262:6262 IMAGE -s -p "super-secret"                      (server)
#   docker run -i IMAGE -h "chat-server:6262" -p "super-secret" -n "alice"  (client;
#     -it for the interactive prompt)
# Port 6262: chat (and every hub service); 50051: where the stock device client
# dials; 8080: streaming over TCP (docs/protocol.md). Every option can also come
# from a HUB_* variable (`docker run -e HUB_STREAM_ADDRESS=none ...`; README).
# Core dependencies only: the Qt device simulator is not in the image.
FROM python:3.11-slim-bookworm

# libopus0: opuslib binds to it with ctypes at import time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopus0 \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY . /src
# `hub --help` proves the entry point imports (opuslib finds libopus), and the
# check proves the bundled sounds (package data) are where the hub looks. The
# redis extra: deploy/ runs this image as several hubs with --redis.
RUN pip install --no-cache-dir "/src[redis]" \
    && rm -rf /src \
    && hub --help > /dev/null \
    && python -c "import hub.backplane" \
    && python -c "from hub.audio.library import SoundLibrary as L; assert len(L.from_folder()) == 5"

RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent hub
USER hub
WORKDIR /tmp

EXPOSE 6262 50051 8080
# `hub health` asks the gRPC health service on the server's own address,
# found as the server found it (-h is not visible here: use HUB_HOST to move it).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["hub", "health"]
ENTRYPOINT ["hub"]
