//! The container sandbox: namespaces, mounts, pivot_root, users, capabilities, cgroups, pty and
//! process supervision.
//!
//! Knows nothing about images, digests or Dockerfiles. Empty until the runtime issue.
