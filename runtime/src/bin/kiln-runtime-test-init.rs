//! A stand-in for the kiln binary in the runtime's tests: with the marker argument it is the
//! container init, as `kiln __kiln-init` is.

/// The argument that makes this program the container init.
const INIT_MARKER: &str = "__kiln-init";

#[allow(
    clippy::print_stderr,
    clippy::exit,
    reason = "a test helper binary: its only output is a usage line"
)]
fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == INIT_MARKER)
    {
        kiln_runtime::init_main();
    }
    eprintln!("usage: kiln-runtime-test-init {INIT_MARKER} (started by kiln_runtime::run)");
    std::process::exit(2);
}
