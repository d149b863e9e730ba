//! Dockerfile semantics and the BuildKit-like DAG solver behind `kiln build`.
//!
//! Owns ARG/ENV scoping, the build graph, cache keys, the scheduler, the build context and
//! `.dockerignore`, exporters and progress events. So far: how the image-config instructions
//! (CMD, ENV, EXPOSE, ...) change an image's config ([`config`]), which `kiln import -c` uses and
//! the build will use for the same instructions.

pub mod config;
