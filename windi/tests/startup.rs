//! The `windi` binary itself: it refuses bad configuration with a message naming the variable,
//! and on a good one creates its database, migrates it, and serves.

#![allow(clippy::unwrap_used)]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The run's test Postgres (started by the harness unless `TEST_DATABASE_URL` names one).
fn admin_url() -> String {
    windi_embedded::test_services::shared()
        .postgres_admin_url
        .clone()
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
    let (ok, stderr) = stderr_of(windi().env("DATABASE_URL", admin_url()));
    assert!(!ok);
    assert!(stderr.contains("JWT_SECRET_KEY is not set"), "{stderr}");
    assert_eq!(
        stderr.matches("JWT_SECRET_KEY is not set").count(),
        1,
        "the error is printed once: {stderr}"
    );

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
    // Both ports expose the process's metrics, the pool and the relay among them.
    for port in [port, relay_port] {
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains(r#"windi_db_pool_connections{pool="api",state="idle"}"#),
            "{metrics}"
        );
        assert!(metrics.contains("windi_relay_connections 0"), "{metrics}");
    }
}

#[test]
fn every_command_answers_help_and_version() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["demo"],
        &["generate"],
        &["check"],
        &["migrate"],
        &["healthcheck"],
        &["admin"],
        &["admin", "users"],
    ];
    for command in commands {
        let out = windi().args(*command).arg("--help").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command:?} --help: {out:?}");
        assert!(stdout.contains("Usage: windi"), "{command:?}: {stdout}");
        let out = windi().args(*command).arg("--version").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command:?} --version: {out:?}");
        assert!(
            stdout.starts_with("windi") && stdout.trim_end().ends_with(env!("CARGO_PKG_VERSION")),
            "{command:?}: {stdout}"
        );
    }
    let out = windi().args(["generate", "--users"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "once: {stderr}");
}

#[test]
fn a_refused_password_names_the_fix_once() {
    // Postgres refuses the role before any password matters; the hint names the fix.
    let base = admin_url();
    let (scheme_host, _) = base.rsplit_once('/').unwrap();
    let url = scheme_host.replacen("postgres@", "no_such_role_windi@", 1) + "/windi";
    let (ok, stderr) = stderr_of(
        windi()
            .arg("migrate")
            .env("DATABASE_URL", &url)
            .env("JWT_SECRET_KEY", "z".repeat(40)),
    );
    assert!(!ok);
    assert!(stderr.contains("that role does not exist"), "{stderr}");
    assert_eq!(stderr.matches("cannot prepare").count(), 1, "{stderr}");
}

#[test]
fn a_database_url_where_nothing_listens_is_named_as_such() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, stderr) = stderr_of(
        windi()
            .arg("migrate")
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{port}/windi"),
            )
            .env("JWT_SECRET_KEY", "z".repeat(40)),
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!("nothing listens at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("reachable"), "{stderr}");
}

#[test]
fn a_json_log_line_carries_the_request_id_of_the_response() {
    use std::io::BufRead;
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free_port();
    let database = format!("windi_json_{}", std::process::id());
    let url = format!("{}/{database}", admin_url().rsplit_once('/').unwrap().0);
    let child = windi()
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET_KEY", "y".repeat(40))
        .env("PORT", port.to_string())
        .env("WINDI_RELAY", "off")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running { child, database };
    let stderr = running.child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let response = loop {
        if let Some(response) = http_get(port, "/chat/list") {
            break response;
        }
        assert!(Instant::now() < deadline, "windi did not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    let request_id = response
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id header: {response}"))
        .trim()
        .to_owned();
    assert!(
        response.contains(&format!(r#""request_id":"{request_id}""#)),
        "the error body carries it: {response}"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with request id {request_id}"));
        assert!(!line.contains('\u{1b}'), "no ANSI codes: {line}");
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("not a JSON line: {line}");
        };
        if json["span"]["request_id"] == request_id.as_str() {
            assert_eq!(json["level"], "INFO", "request lines are at info: {line}");
            assert_eq!(json["span"]["uri"], "/chat/list", "{line}");
            break;
        }
    }
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
