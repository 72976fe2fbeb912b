//! The `windi` binary itself: it refuses bad configuration with a message naming the variable,
//! and on a good one creates its database, migrates it, and serves.

#![allow(clippy::unwrap_used)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The binary with a clean environment, run outside the repository so no `.env` is found.
fn windi() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_windi"));
    cmd.env_clear()
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

fn stderr_of(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_short_jwt_secret_stops_start_up_and_says_how_to_make_one() {
    let (ok, stderr) = stderr_of(
        windi()
            .env("DATABASE_URL", admin_url())
            .env("JWT_SECRET_KEY", "mytopsecretkey"),
    );
    assert!(!ok);
    assert!(stderr.contains("JWT_SECRET_KEY"), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    assert!(
        !stderr.contains("mytopsecretkey"),
        "the secret must not be printed"
    );
}

#[test]
fn missing_and_malformed_variables_are_named() {
    let secret = "x".repeat(40);
    let (ok, stderr) = stderr_of(windi().env("JWT_SECRET_KEY", &secret));
    assert!(!ok);
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");

    let (ok, stderr) = stderr_of(
        windi()
            .env("DATABASE_URL", admin_url())
            .env("JWT_SECRET_KEY", &secret)
            .env("PORT", "eighty"),
    );
    assert!(!ok);
    assert!(stderr.contains("PORT is invalid"), "{stderr}");

    let (ok, stderr) = stderr_of(
        windi()
            .env("DATABASE_URL", admin_url())
            .env("JWT_SECRET_KEY", &secret)
            .env("JWT_ALGORITHM", "none"),
    );
    assert!(!ok);
    assert!(stderr.contains("JWT_ALGORITHM"), "{stderr}");
}

/// Kills the server and drops its database however the test ends.
struct Running {
    child: std::process::Child,
    database: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("psql")
            .args([&admin_url(), "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .output();
    }
}

#[test]
fn it_creates_and_migrates_its_database_then_serves() {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, relay_port) = (free_port(), free_port());
    let database = format!("windi_start_{}", std::process::id());
    let base = admin_url();
    let url = format!("{}/{database}", base.rsplit_once('/').unwrap().0);
    let child = windi()
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET_KEY", "y".repeat(40))
        .env("PORT", port.to_string())
        .env("RELAY_PORT", relay_port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running { child, database };

    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some(body) = http_get(port, "/ready") {
            break body;
        }
        assert!(Instant::now() < deadline, "windi did not answer /ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("in-process"), "{ready}");
    let relay = http_get(relay_port, "/health").unwrap_or_default();
    assert!(
        relay.starts_with("HTTP/1.1 200"),
        "the relay runs too: {relay}"
    );
}

/// A minimal HTTP/1.1 GET (the test needs no client library for one request).
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
