//! Dockerfile semantics and the BuildKit-like DAG solver behind `kiln build`.
//!
//! Owns ARG/ENV scoping, the build graph, cache keys, the scheduler, the build context and
//! `.dockerignore`, exporters and progress events. Empty until the builder issue: the parser
//! (`kiln-parser`) already provides the typed AST and the word expander this crate will consume.
