//! Start-up cost of `run` for `true` (a measurement, not a timed assertion): run with
//! `cargo test --release -p kiln-runtime --test startup_time -- --ignored --nocapture`.
//!
//! Measured in three configurations, to show what the cgroup and the seccomp filter cost:
//! unconfined (still with its own, unlimited cgroup), the default (Docker's seccomp
//! profile), and the default with memory, CPU and pids limits.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, fixture};
use kiln_runtime::{Exit, Resources, Seccomp};

fn median_of_runs(f: &mut Fixture, runs: usize) -> Vec<Duration> {
    let mut samples = Vec::new();
    for _ in 0..runs {
        // A fresh id per run, as the CLI gives each container its own.
        f.spec.id = common::unique_id();
        let start = Instant::now();
        let outcome = f.run();
        samples.push(start.elapsed());
        assert_eq!(outcome.exit(), Exit::Code(0));
    }
    samples.sort();
    samples
}

#[test]
#[ignore = "a measurement; run explicitly in release mode"]
#[allow(clippy::print_stdout, reason = "prints the measurement")]
fn median_wall_time_of_run_true() {
    let Some(mut f) = fixture() else { return };
    f.spec.args = vec!["/bin/true".into()];
    let configurations: [(&str, Seccomp, Resources); 3] = [
        ("unconfined", Seccomp::Unconfined, Resources::default()),
        ("default seccomp", Seccomp::Default, Resources::default()),
        (
            "default seccomp + limits",
            Seccomp::Default,
            Resources {
                memory: Some(256 << 20),
                cpus: Some(1.0),
                pids_limit: Some(100),
                ..Resources::default()
            },
        ),
    ];
    for (name, seccomp, resources) in configurations {
        f.spec.seccomp = seccomp;
        f.spec.resources = resources;
        let samples = median_of_runs(&mut f, 50);
        println!(
            "run(true), {name}, over {} runs: min {:?}, median {:?}, p90 {:?}, max {:?}",
            samples.len(),
            samples[0],
            samples[samples.len() / 2],
            samples[samples.len() * 9 / 10],
            samples[samples.len() - 1]
        );
    }
}
