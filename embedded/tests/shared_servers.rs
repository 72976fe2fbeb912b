//! The test servers are shared by every process of a run and removed after the last one:
//! two processes that overlap get the same Postgres and NATS, and once both have ended the
//! reaper stops the servers and removes their folder.
//!
//! Runs `with-test-services` (this crate's binary, which attaches exactly as the test harness
//! does) with `TMPDIR` pointing at a folder of its own, so it starts servers of its own rather
//! than joining this run's.

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// `with-test-services sh -c SCRIPT ARGS...` with no TEST_* variables and its own temp folder.
fn with_services(tmp: &Path, script: &str, args: &[&Path]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_with-test-services"));
    cmd.args(["sh", "-c", script, "sh"])
        .args(args)
        .env_remove("TEST_DATABASE_URL")
        .env_remove("TEST_NATS_URL")
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn run_folders(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("windi-tests-")
        })
        .collect()
}

fn port_of(url: &str) -> u16 {
    let after_host = url.rsplit(':').next().unwrap();
    after_host.split('/').next().unwrap().parse().unwrap()
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn servers_are_shared_while_anyone_uses_them_and_removed_after_the_last() {
    let tmp = std::env::temp_dir().join(format!("windi-shared-servers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // The `postgres` user (when run as root) must reach the cluster inside.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let urls_file = tmp.join("first-urls");
    let release = tmp.join("release");
    // However the test ends, the first user is let go (a failed assertion must not leave it
    // polling forever) and the folder is removed.
    let _cleanup = Cleanup(tmp.clone());

    // The first user writes the URLs it got, then holds on until released.
    let mut first = with_services(
        &tmp,
        r#"echo "$TEST_DATABASE_URL $TEST_NATS_URL" > "$1.tmp" && mv "$1.tmp" "$1";
           while [ ! -e "$2" ]; do sleep 0.1; done"#,
        &[&urls_file, &release],
    )
    .spawn()
    .unwrap();
    wait_for("the first user's servers", Duration::from_secs(60), || {
        urls_file.exists()
    });
    let first_urls = std::fs::read_to_string(&urls_file).unwrap();
    let (pg, nats) = first_urls.trim().split_once(' ').unwrap();
    assert!(
        pg.starts_with("postgres://") && nats.starts_with("nats://"),
        "{first_urls}"
    );
    let (pg_port, nats_port) = (port_of(pg), port_of(nats));
    assert!(accepts(pg_port) && accepts(nats_port));
    assert_eq!(run_folders(&tmp).len(), 1);

    // A second user while the first still runs: the same servers, nothing new started.
    let second = with_services(&tmp, r#"echo "$TEST_DATABASE_URL $TEST_NATS_URL""#, &[])
        .output()
        .unwrap();
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        first_urls.trim()
    );
    // The second has ended; the first still holds them, so they stay through the reaper's
    // idle time and beyond: watched all along, failing the moment either stops accepting.
    let watch_until = Instant::now()
        + Duration::from_secs(u64::from(windi_embedded::test_services::IDLE_SECS + 2));
    while Instant::now() < watch_until {
        assert!(
            accepts(pg_port) && accepts(nats_port),
            "the servers stay while one user remains"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    std::fs::write(&release, b"").unwrap();
    assert!(first.wait().unwrap().success());
    wait_for(
        "the reaper to stop the servers and remove their folder",
        Duration::from_secs(30),
        || run_folders(&tmp).is_empty() && !accepts(pg_port) && !accepts(nats_port),
    );
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("release"), b"");
        // The first user notices within 0.1 s; its folder goes once it has.
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
