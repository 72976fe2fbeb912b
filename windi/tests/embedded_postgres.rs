//! With `DATABASE_URL` unset, `windi` runs its own Postgres in `./.windi`, and that cluster
//! belongs to the process that started it:
//! - an account registered in one run logs in on the next, and the server stops with windi;
//! - `demo`, `migrate`, `check` and `admin` run next to a serving windi use its cluster and
//!   leave it running;
//! - a windi killed with SIGKILL leaves its cluster running, and the next start adopts it,
//!   data and all, and stops it on exit;
//! - SIGHUP (the terminal closed) stops windi and its cluster as Ctrl-C does;
//! - run as root with the folder where the `postgres` user cannot enter, it says so.
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

impl Folder {
    fn new(name: &str) -> Self {
        assert!(
            windi_embedded::postgres::find_binaries().is_some(),
            "this test needs PostgreSQL's server binaries: {}",
            windi_embedded::postgres::install_hint()
        );
        let dir = std::env::temp_dir().join(format!("windi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn cluster(&self) -> PathBuf {
        self.0.join(".windi/postgres")
    }

    /// `pg_ctl status`: a live server on the cluster, not just a PID file.
    fn server_running(&self) -> bool {
        windi_embedded::postgres::Cluster::new(self.cluster())
            .unwrap()
            .is_running()
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        if let Ok(cluster) = windi_embedded::postgres::Cluster::new(self.cluster())
            && cluster.is_running()
        {
            let _ = cluster.stop("immediate");
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `windi` in `dir` with nothing but a JWT secret and its ports: no DATABASE_URL, no .env.
fn windi(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_windi"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("JWT_SECRET_KEY", "e".repeat(40))
        .env("PORT", port.to_string())
        .env("RELAY_PORT", free_port().to_string())
        .current_dir(dir)
        .stdin(Stdio::null());
    if let Some(bin) = std::env::var_os("POSTGRES_BIN_DIR") {
        cmd.env("POSTGRES_BIN_DIR", bin);
    }
    cmd
}

/// The server, its stderr in `<dir>/server-<n>.log` (read by [`log`]).
fn start(dir: &Path, port: u16, n: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("server-{n}.log"))).unwrap();
    windi(dir, port)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn log(dir: &Path, n: u32) -> String {
    std::fs::read_to_string(dir.join(format!("server-{n}.log"))).unwrap_or_default()
}

/// A command run to its end: success and stderr.
fn run(dir: &Path, port: u16, args: &[&str]) -> (bool, String) {
    let out = windi(dir, port).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), format!("{stderr}{stdout}"))
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

fn assert_ready(port: u16, after: &str) {
    let ready = request(port, "GET", "/ready", "").unwrap_or_default();
    assert!(
        ready.starts_with("HTTP/1.1 200"),
        "the server answers /ready after {after}: {ready}"
    );
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sends `sig` (SIGTERM as compose and systemd do, SIGHUP as a closing terminal does), then
/// waits for a clean exit.
fn stop_with(mut child: Child, sig: &str) {
    signal(&child, sig);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "windi exited with {status} after {sig}");
            return;
        }
        assert!(Instant::now() < deadline, "windi did not stop on {sig}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn register(port: u16, email: &str) {
    let body = format!(r#"{{"name":"Eve","email":"{email}","password":"embedded-pass"}}"#);
    let register = request(port, "POST", "/auth/register", &body).unwrap();
    assert!(register.starts_with("HTTP/1.1 201"), "{register}");
}

fn assert_logs_in(port: u16, email: &str) {
    let body = format!(r#"{{"email":"{email}","password":"embedded-pass"}}"#);
    let login = request(port, "POST", "/auth/login", &body).unwrap();
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    assert!(login.contains("access_token"), "{login}");
}

#[test]
fn without_database_url_windi_keeps_its_data_in_its_own_postgres_across_restarts() {
    let folder = Folder::new("embedded");
    let dir = folder.0.clone();
    let port = free_port();

    let mut first = start(&dir, port, 1);
    wait_ready(port, &mut first);
    register(port, "eve@example.com");
    assert!(folder.server_running(), "the cluster runs while windi does");
    stop_with(first, "-TERM");
    assert!(!folder.server_running(), "the cluster stops with windi");
    assert!(log(&dir, 1).contains("created and started its own Postgres"));

    let mut second = start(&dir, port, 2);
    wait_ready(port, &mut second);
    assert_logs_in(port, "eve@example.com");
    stop_with(second, "-TERM");
    assert!(!folder.server_running());
    let second_log = log(&dir, 2);
    assert!(
        second_log.contains("started its own Postgres"),
        "{second_log}"
    );
    assert!(
        !second_log.contains("stopping its Postgres"),
        "{second_log}"
    );
}

#[test]
fn commands_run_next_to_a_server_use_its_postgres_and_leave_it_running() {
    let folder = Folder::new("shared-cluster");
    let dir = folder.0.clone();
    let port = free_port();
    let mut server = start(&dir, port, 1);
    wait_ready(port, &mut server);
    register(port, "eve@example.com");

    for command in [
        &["demo"][..],
        &["migrate"],
        &["check"],
        &["admin", "users"],
        &["demo"],
    ] {
        let (ok, output) = run(&dir, free_port(), command);
        assert!(ok, "windi {command:?}: {output}");
        assert!(
            output.contains("is using its own Postgres")
                && output.contains("this command leaves it running"),
            "windi {command:?} says it uses the server's cluster: {output}"
        );
        assert!(
            !output.contains("stopping its Postgres") && !output.contains("pg_ctl"),
            "{output}"
        );
        assert!(folder.server_running(), "still running after {command:?}");
        assert_ready(port, &format!("windi {command:?}"));
        assert_logs_in(port, "eve@example.com");
    }
    // What demo made is there for the server too (the two used one database).
    let (_, users) = run(&dir, free_port(), &["admin", "users"]);
    assert!(users.contains("Alice"), "{users}");

    stop_with(server, "-TERM");
    assert!(
        !folder.server_running(),
        "the starter stops it when it exits"
    );
    let server_log = log(&dir, 1);
    assert!(
        !server_log.contains("stopping its Postgres"),
        "{server_log}"
    );
}

#[test]
fn a_cluster_left_by_a_killed_windi_is_adopted_by_the_next_with_its_data() {
    let folder = Folder::new("adopt");
    let dir = folder.0.clone();
    let port = free_port();
    let mut first = start(&dir, port, 1);
    wait_ready(port, &mut first);
    register(port, "eve@example.com");
    signal(&first, "-KILL");
    first.wait().unwrap();
    assert!(
        folder.server_running(),
        "SIGKILL gives windi no chance to stop its cluster: it runs on"
    );

    let mut second = start(&dir, port, 2);
    wait_ready(port, &mut second);
    let second_log = log(&dir, 2);
    assert!(second_log.contains("adopted its own"), "{second_log}");
    assert_logs_in(port, "eve@example.com");
    // A command next to it now sees the adopter as the owner and leaves the cluster alone.
    let (ok, output) = run(&dir, free_port(), &["check"]);
    assert!(
        ok && output.contains("this command leaves it running"),
        "{output}"
    );
    assert_ready(port, "windi check");

    stop_with(second, "-TERM");
    assert!(!folder.server_running(), "the adopter stops it on exit");
}

#[test]
fn sighup_stops_windi_and_its_postgres_as_ctrl_c_does() {
    let folder = Folder::new("sighup");
    let dir = folder.0.clone();
    let port = free_port();
    let mut server = start(&dir, port, 1);
    wait_ready(port, &mut server);
    assert!(folder.server_running());
    stop_with(server, "-HUP");
    assert!(!folder.server_running(), "SIGHUP stops the cluster too");

    let mut again = start(&dir, port, 2);
    wait_ready(port, &mut again);
    stop_with(again, "-INT");
    assert!(!folder.server_running(), "and so does SIGINT (Ctrl-C)");
}

#[test]
fn as_root_a_folder_the_postgres_user_cannot_enter_is_named() {
    let folder = Folder::new("closed");
    let dir = folder.0.clone();
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&probe).unwrap()) == 0;
    if !root {
        // Only root hands the cluster to the `postgres` user; anyone else runs it themselves.
        return;
    }
    // As in root's home folder: mode 0700, with the project inside.
    let home = dir.join("home");
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (ok, output) = run(&project, free_port(), &["migrate"]);
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!("cannot enter {} (mode 0700)", home.display())),
        "{output}"
    );
    assert!(output.contains("chmod o+x"), "{output}");
    assert!(!output.contains("stopping its Postgres"), "{output}");
    assert!(!output.contains("Permission denied"), "{output}");
}
