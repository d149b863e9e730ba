//! Dockerfile semantics and the BuildKit-like DAG solver behind `kiln build`.
//!
//! Owns ARG/ENV scoping, the build graph, cache keys, the scheduler, the build context and
//! `.dockerignore`, exporters and progress events, and the composition "image snapshot +
//! sandbox" that `run` and the build's RUN steps share: the build itself ([`build`]), how the
//! image-config instructions change an image's config ([`config`], also used by
//! `kiln import -c`), what a container runs by Docker's rules ([`container`]), the build context
//! and its archives ([`context`]), `.dockerignore` matching ([`ignore`]), `--chmod` modes
//! ([`chmod`]), ADD's downloads and git checkouts ([`remote`]) and `--output` exporters
//! ([`export`]).

pub mod build;
pub mod chmod;
pub mod config;
pub mod container;
pub mod context;
pub mod export;
pub mod ignore;
pub mod remote;
mod statcache;
