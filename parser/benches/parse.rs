//! Parse time against input size: `cargo bench -p kiln-parser --bench parse`.
//!
//! `realistic` parses generated multi-stage Dockerfiles of 10 KB to 4 MB that use every
//! instruction the way real files do (long `RUN` continuation chains, heredocs, exec-form `CMD`,
//! `ENV`/`LABEL` with many pairs, `COPY`/`ADD`/`RUN` flags). Its throughput must stay roughly
//! constant from 100 KB to 4 MB: the parser is linear. The measured figures are in `BENCHMARKS.md`.
//!
//! `one_long_line` parses a single `COPY` line with many sources. It documents a known
//! super-linear case (every word's column is counted from the start of its physical line), with
//! sizes small enough to finish; once fixed, its throughput stays constant across sizes.

use std::fmt::Write as _;

use divan::counter::BytesCount;
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

/// Parses a multi-stage Dockerfile of about `size` bytes (the argument divan shows).
#[divan::bench(args = [10_000, 100_000, 1_000_000, 4_000_000])]
fn realistic(bencher: Bencher, size: usize) {
    let text = realistic_dockerfile(size);
    let statements = kiln_parser::parse(&text)
        .unwrap_or_else(|error| panic!("{}", error.render("Dockerfile", &text)))
        .statements
        .len();
    assert!(statements > size / 200, "only {statements} statements");
    bencher
        .counter(BytesCount::of_str(&text))
        .bench(|| kiln_parser::parse(black_box(&text)));
}

/// Parses `COPY src src ... /dst/`, all on one line, of about `size` bytes.
#[divan::bench(args = [16_000, 64_000, 256_000], sample_count = 10)]
fn one_long_line(bencher: Bencher, size: usize) {
    let text = format!("FROM busybox\nCOPY {}/dst/\n", "src ".repeat(size / 4));
    assert!(kiln_parser::parse(&text).is_ok());
    bencher
        .counter(BytesCount::of_str(&text))
        .bench(|| kiln_parser::parse(black_box(&text)));
}

/// A Dockerfile of at least `size` bytes: global ARGs, then build stages (about 2.8 KB each) until
/// the size is reached. Every stage is different (its number is in names and values), so nothing
/// can be served from a cache of identical lines.
fn realistic_dockerfile(size: usize) -> String {
    let mut text = String::with_capacity(size + 4096);
    text.push_str("# syntax=docker/dockerfile:1\n# check=error=true\n\n");
    text.push_str("ARG GO_VERSION=1.23 ALPINE_VERSION=3.20\nARG REGISTRY=docker.io\n\n");
    let mut stage = 0;
    while text.len() < size {
        write_stage(&mut text, stage);
        stage += 1;
    }
    text
}

fn write_stage(text: &mut String, n: usize) {
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        r#"# Build stage {n}: compiles the service and its tools.
FROM --platform=$BUILDPLATFORM ${{REGISTRY}}/library/golang:${{GO_VERSION}}-alpine${{ALPINE_VERSION}} AS build{n}
ARG TARGETOS TARGETARCH VERSION=1.{n}.0
ENV CGO_ENABLED=0 \
    GOOS=${{TARGETOS}} \
    GOARCH=${{TARGETARCH}} \
    GOFLAGS="-trimpath -mod=readonly" \
    GOCACHE=/root/.cache/go-build \
    GOMODCACHE=/go/pkg/mod \
    PATH="/usr/local/go/bin:/go/bin:$PATH"
WORKDIR /src/service{n}
COPY --link go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod,sharing=locked \
    --mount=type=cache,target=/root/.cache/go-build \
    --network=default \
    set -eux; \
    apk add --no-cache git=2.45.2-r0 make=4.4.1-r2 ca-certificates tzdata; \
    go mod download -x; \
    go mod verify; \
    # Build with the version stamped in.
    go build -ldflags="-s -w -X main.version=${{VERSION}} -X main.stage={n}" \
        -o /out/service{n} ./cmd/service; \
    go build -o /out/healthcheck ./cmd/healthcheck; \
    go test -count=1 -short ./... 2>&1 | tee /out/test.log; \
    strip /out/service{n} || true; \
    rm -rf /tmp/* /var/cache/apk/*
COPY --from=assets{n} --chown=1000:1000 --chmod=0644 /assets/ /out/assets/
RUN <<EOF
set -eu
mkdir -p /out/etc/service{n}
printf '%s\n' "version=${{VERSION}}" > /out/etc/service{n}/build-info
find /out -type f -exec sha256sum {{}} + > /out/SHA256SUMS
EOF
COPY <<-"CONF" /out/etc/service{n}/config.yaml
	listen: ":80{n}"
	log_level: info
	cache_dir: /var/cache/service{n}
	CONF

FROM ${{REGISTRY}}/library/alpine:${{ALPINE_VERSION}} AS runtime{n}
LABEL org.opencontainers.image.title="service{n}" \
      org.opencontainers.image.version="1.{n}.0" \
      org.opencontainers.image.vendor="Example" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/service{n}" \
      com.example.stage="{n}" maintainer="team-{n}@example.invalid"
RUN addgroup -S -g 1000 app && adduser -S -u 1000 -G app -h /home/app app
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d \
    https://example.invalid/releases/tool-{n}.tar.gz /opt/tool/
COPY --from=build{n} --link /out/service{n} /out/healthcheck /usr/local/bin/
COPY --from=build{n} ["/out/etc/service{n}/", "/etc/service{n}/"]
ENV SERVICE_NAME=service{n} SERVICE_PORT=80{n} LOG_FORMAT=json TZ=UTC
EXPOSE 80{n}/tcp 9{n}/udp
VOLUME ["/var/lib/service{n}", "/var/cache/service{n}"]
WORKDIR /home/app
USER app:app
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/healthcheck", "--port", "80{n}"]
ONBUILD COPY . /home/app/plugins/
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-eu", "-c"]
ENTRYPOINT ["/usr/local/bin/service{n}", "--config", "/etc/service{n}/config.yaml"]
CMD ["serve", "--log-format=json", "--metrics-addr=:9{n}"]

"#
    );
}
