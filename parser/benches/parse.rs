//! Parse-time benchmark (placeholder until the benchmark lands in this session).
fn main() {}
