//! Dockerfile semantics and the BuildKit-like DAG solver behind `kiln build`.
//!
//! Owns ARG/ENV scoping, the build graph, cache keys, the scheduler, the build context and
//! `.dockerignore`, exporters and progress events, and the composition "image snapshot +
//! sandbox" that `run` and the build's RUN steps share. So far: how the image-config
//! instructions (CMD, ENV, EXPOSE, ...) change an image's config ([`config`]), which
//! `kiln import -c` uses and the build will use for the same instructions, and what a container
//! runs by Docker's rules ([`container`]), and `.dockerignore` matching ([`ignore`]).

pub mod build;
pub mod config;
pub mod container;
pub mod context;
pub mod ignore;
