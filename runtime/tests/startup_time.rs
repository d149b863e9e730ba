//! Start-up cost of `run` for `true` (a measurement, not a timed assertion): run with
//! `cargo test --release -p kiln-runtime --test startup_time -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use common::fixture;
use kiln_runtime::Exit;

#[test]
#[ignore = "a measurement; run explicitly in release mode"]
#[allow(clippy::print_stdout, reason = "prints the measurement")]
fn median_wall_time_of_run_true() {
    let Some(mut f) = fixture() else { return };
    f.spec.args = vec!["/bin/true".into()];
    let mut samples = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let outcome = f.run();
        samples.push(start.elapsed());
        assert_eq!(outcome.result.unwrap(), Exit::Code(0));
    }
    samples.sort();
    println!(
        "run(true) over {} runs: min {:?}, median {:?}, p90 {:?}, max {:?}",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10],
        samples[samples.len() - 1]
    );
}
