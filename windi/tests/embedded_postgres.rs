//! With `DATABASE_URL` unset, `windi` runs its own Postgres in `./.windi`: an account
//! registered in one run logs in on the next, and the server stops with windi.
//!
//! It uses the machine's PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`, or
//! `POSTGRES_BIN_DIR`) and fails naming them when they are missing. Run as root (CI), the
//! cluster belongs to the `postgres` system user.

#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// An empty folder under the system temp dir (readable by the `postgres` user when run as
/// root), removed at the end, with any server still in it stopped first.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let cluster = self.0.join(".windi/postgres");
        if let Some(bin) = pg_bin() {
            let _ = Command::new(bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-D"])
                .arg(&cluster)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pg_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .find(|b| b.join("pg_ctl").is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `windi` in `dir` with nothing but a JWT secret and its ports: no DATABASE_URL, no .env.
fn start(dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_windi"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("JWT_SECRET_KEY", "e".repeat(40))
        .env("PORT", port.to_string())
        .env("RELAY_PORT", free_port().to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// One HTTP/1.1 request; `None` while nothing answers.
fn request(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn wait_ready(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = request(port, "GET", "/ready", "") {
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "windi exited early");
        assert!(Instant::now() < deadline, "windi did not get ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, as compose and systemd send it, then wait for a clean exit.
fn stop(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "windi exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "windi did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_running(dir: &Path) -> bool {
    dir.join(".windi/postgres/postmaster.pid").exists()
}

#[test]
fn without_database_url_windi_keeps_its_data_in_its_own_postgres_across_restarts() {
    assert!(
        pg_bin().is_some(),
        "this test needs PostgreSQL's server binaries under /usr/lib/postgresql/*/bin \
         (apt-get install postgresql)"
    );
    let dir = std::env::temp_dir().join(format!("windi-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let folder = Folder(dir.clone());
    let port = free_port();

    let mut first = start(&dir, port);
    wait_ready(port, &mut first);
    let register = request(
        port,
        "POST",
        "/auth/register",
        r#"{"name":"Eve","email":"eve@example.com","password":"embedded-pass"}"#,
    )
    .unwrap();
    assert!(register.starts_with("HTTP/1.1 201"), "{register}");
    assert!(server_running(&dir), "the cluster runs while windi does");
    stop(first);
    assert!(!server_running(&dir), "the cluster stops with windi");

    let mut second = start(&dir, port);
    wait_ready(port, &mut second);
    let login = request(
        port,
        "POST",
        "/auth/login",
        r#"{"email":"eve@example.com","password":"embedded-pass"}"#,
    )
    .unwrap();
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    assert!(login.contains("access_token"), "{login}");
    stop(second);
    assert!(!server_running(&dir));
    drop(folder);
}
