//! `with-test-services COMMAND [ARGS...]`: runs a command with the test run's own Postgres and
//! NATS (started, or joined if a run already has them; see `windi_embedded::test_services`),
//! their URLs in the environment (`TEST_DATABASE_URL`, `TEST_NATS_URL`, and the admin URL
//! under the names `scripts/fuzz.sh`, `scripts/soak.sh` and `windi-bench` read), and exits
//! with its status. The servers go a few seconds after the last user ends, as for the tests.
//!
//! For the scripts that need a Postgres and a NATS but are not Rust tests: `scripts/fuzz.sh`,
//! `scripts/soak.sh` and the benchmark smoke in `.ci/run`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: with-test-services COMMAND [ARGS...]");
        return ExitCode::from(2);
    };
    let services = windi_embedded::test_services::shared();
    let pg = &services.postgres_admin_url;
    let nats = &services.nats_url;
    eprintln!("with-test-services: Postgres {pg}, NATS {nats}");
    let status = Command::new(&program)
        .args(args)
        .env("TEST_DATABASE_URL", pg)
        .env("TEST_NATS_URL", nats)
        .env("FUZZ_ADMIN_URL", pg)
        .env("SOAK_ADMIN_URL", pg)
        .env("BENCH_ADMIN_URL", pg)
        .status();
    match status {
        Ok(status) => ExitCode::from(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1))),
        Err(e) => {
            eprintln!(
                "with-test-services: cannot run {}: {e}",
                program.to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}
