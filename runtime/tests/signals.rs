//! Signals sent to the process that called `run` reach the container (Docker's sig-proxy).
//!
//! Its own test binary: it sends SIGTERM to the whole test process, which must not disturb
//! containers of other tests.

mod common;

use std::time::Duration;

use common::fixture;
use kiln_runtime::Exit;

#[test]
fn sigterm_to_the_caller_is_forwarded_to_the_container_and_the_caller_survives() {
    let Some(mut f) = fixture() else { return };
    f.spec.args = vec![
        "sh".into(),
        "-c".into(),
        "trap 'exit 42' TERM; touch /ready; sleep 30 & wait".into(),
    ];
    let spec = f.spec.clone();
    let scratch = f.dir.path().to_path_buf();
    let runner = std::thread::spawn(move || common::run_spec(&spec, &scratch));
    // The container touches /ready after installing its trap, and `run` installs the
    // forwarding handlers before starting the init, so the signal cannot be lost or kill us.
    assert!(common::wait_for_file(
        &f.path("upper/ready"),
        Duration::from_secs(10)
    ));
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(runner.join().unwrap().exit(), Exit::Code(42));
}
