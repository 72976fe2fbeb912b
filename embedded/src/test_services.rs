//! The servers the tests talk to, started by the tests themselves: one private Postgres
//! cluster and one `nats-server -js`, each on a free loopback port, shared by every test
//! process of a run (`cargo test` runs one process per test binary, nextest one per test) and
//! removed a few seconds after the last of them ends.
//!
//! `TEST_DATABASE_URL` (a server's maintenance database, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_NATS_URL` (NATS with JetStream)
//! point the tests at servers that already run instead; nothing is started for them.
//!
//! How processes share them, in a folder of the temp dir named after the build's target
//! folder and the network namespace (so a second checkout, or the same one in another
//! namespace, gets servers of its own):
//! - `setup.lock`: held while a process attaches or the servers start or stop, so nobody
//!   attaches to servers that are going away;
//! - `users.lock`: every attached process holds it shared until it exits (the kernel lets go
//!   of a killed process's lock too);
//! - `state`: the ports and the reaper's PID, written once the servers accept connections;
//! - the reaper: a small shell loop in a session of its own (Ctrl-C on the test run does not
//!   reach it) that, once `users.lock` has been free for [`IDLE_SECS`] seconds in a row,
//!   takes `setup.lock`, stops both servers and removes the folder. It needs util-linux's
//!   `flock` and `setsid`, which every Debian and Ubuntu has.
//!
//! Why a reaper and not a destructor: a test binary ends with `exit()`, which runs no Rust
//! destructor, and the servers must outlive one binary to be shared by the next.
//!
//! The test cluster trusts every connection on 127.0.0.1 (no password to configure) and runs
//! with `fsync=off`: its data is thrown away after the run, and a crash of the machine mid-run
//! costs nothing but a rerun. The Unix socket and data stay in a folder only its owner enters.

use std::{
    collections::hash_map::DefaultHasher,
    fs::{self, File},
    hash::{Hash, Hasher},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{nats, platform, postgres::Cluster};

/// Seconds with no attached process before the reaper removes the servers: long enough to
/// bridge the gap between two test binaries of one `cargo test`.
pub const IDLE_SECS: u32 = 3;

/// Where the tests find their servers.
#[derive(Debug)]
pub struct TestServices {
    /// A URL of the server's `postgres` database, where each test creates its own.
    pub postgres_admin_url: String,
    /// NATS with JetStream.
    pub nats_url: String,
    /// Held (shared) for the life of this process: the reaper waits for it.
    _attached: Option<File>,
}

/// The run's servers, started or joined on first use. Panics, naming the one install command,
/// when this machine cannot run them.
pub fn shared() -> &'static TestServices {
    static SERVICES: OnceLock<Result<TestServices, String>> = OnceLock::new();
    match SERVICES.get_or_init(attach) {
        Ok(services) => services,
        Err(e) => panic!("{e}"),
    }
}

/// The URLs that are set in the environment (empty counts as unset).
fn from_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn attach() -> Result<TestServices, String> {
    let given_pg = from_env("TEST_DATABASE_URL");
    let given_nats = from_env("TEST_NATS_URL");
    let wants = Wants {
        postgres: given_pg.is_none(),
        nats: given_nats.is_none(),
    };
    if !wants.postgres && !wants.nats {
        return Ok(TestServices {
            postgres_admin_url: given_pg.unwrap_or_default(),
            nats_url: given_nats.unwrap_or_default(),
            _attached: None,
        });
    }
    let tools = Tools::find(wants)?;
    let dir = run_folder(wants);
    let (state, attached) = attach_to(&dir, &tools)?;
    Ok(TestServices {
        postgres_admin_url: given_pg
            .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:{}/postgres", state.pg_port)),
        nats_url: given_nats.unwrap_or_else(|| format!("nats://127.0.0.1:{}", state.nats_port)),
        _attached: Some(attached),
    })
}

/// Which servers this run starts itself.
#[derive(Debug, Clone, Copy)]
struct Wants {
    postgres: bool,
    nats: bool,
}

/// The binaries the wanted servers need, all found, or one message naming every missing one.
#[derive(Debug)]
struct Tools {
    wants: Wants,
    nats_server: Option<PathBuf>,
}

impl Tools {
    fn find(wants: Wants) -> Result<Self, String> {
        let mut missing: Vec<(&str, &str)> = Vec::new();
        if wants.postgres && crate::postgres::find_binaries().is_none() {
            missing.push((
                "PostgreSQL's server binaries (initdb, pg_ctl; or POSTGRES_BIN_DIR)",
                "postgresql",
            ));
        }
        let nats_server = if wants.nats {
            let found = nats::find_server();
            if found.is_none() {
                missing.push(("nats-server (or NATS_SERVER_BIN)", "nats-server"));
            }
            found
        } else {
            None
        };
        if missing.is_empty() {
            return Ok(Self { wants, nats_server });
        }
        let what: Vec<&str> = missing.iter().map(|m| m.0).collect();
        let packages: Vec<&str> = missing.iter().map(|m| m.1).collect();
        Err(format!(
            "the tests start their own Postgres and NATS, and this machine lacks {}: install \
             with `{}` (scripts/test.sh does that for you), or point the tests at running \
             servers with TEST_DATABASE_URL and TEST_NATS_URL",
            what.join(" and "),
            platform::Packages::of_this_machine().install_command(&packages)
        ))
    }
}

/// The run's folder: one per target folder, network namespace and choice of servers.
fn run_folder(wants: Wants) -> PathBuf {
    let mut hasher = DefaultHasher::new();
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().hash(&mut hasher);
    fs::read_link("/proc/self/ns/net")
        .unwrap_or_default()
        .hash(&mut hasher);
    (wants.postgres, wants.nats).hash(&mut hasher);
    std::env::temp_dir().join(format!("windi-tests-{:016x}", hasher.finish()))
}

/// What `state` records of running servers.
#[derive(Debug, Default, Clone, Copy)]
struct State {
    reaper: u32,
    pg_port: u16,
    nats_port: u16,
    nats_pid: u32,
}

impl State {
    fn read(dir: &Path) -> Option<Self> {
        let text = fs::read_to_string(dir.join("state")).ok()?;
        let mut state = Self::default();
        for line in text.lines() {
            let (key, value) = line.split_once('=')?;
            match key {
                "reaper" => state.reaper = value.parse().ok()?,
                "pg_port" => state.pg_port = value.parse().ok()?,
                "nats_port" => state.nats_port = value.parse().ok()?,
                "nats_pid" => state.nats_pid = value.parse().ok()?,
                _ => {}
            }
        }
        Some(state)
    }

    fn write(&self, dir: &Path) -> Result<(), String> {
        let text = format!(
            "reaper={}\npg_port={}\nnats_port={}\nnats_pid={}\n",
            self.reaper, self.pg_port, self.nats_port, self.nats_pid
        );
        fs::write(dir.join("state"), text).map_err(|e| format!("cannot write the state: {e}"))
    }

    /// The reaper lives and every server it records accepts connections.
    fn is_alive(&self) -> bool {
        let accepts = |port: u16| {
            port == 0
                || std::net::TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_secs(1),
                )
                .is_ok()
        };
        process_alive(self.reaper) && accepts(self.pg_port) && accepts(self.nats_port)
    }
}

fn process_alive(pid: u32) -> bool {
    pid != 0
        && Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Joins the servers recorded in `dir`, or starts them; answers them and the held shared lock.
fn attach_to(dir: &Path, tools: &Tools) -> Result<(State, File), String> {
    loop {
        fs::create_dir_all(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o755)))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let setup_path = dir.join("setup.lock");
        let setup = platform::lock_exclusive(&setup_path)
            .map_err(|e| format!("cannot lock {}: {e}", setup_path.display()))?;
        if !is_same_file(&setup, &setup_path) {
            // The reaper removed the folder while we waited: begin again in a new one.
            continue;
        }
        let state = match State::read(dir).filter(State::is_alive) {
            Some(state) => state,
            None => {
                clear_leftovers(dir, tools);
                start(dir, tools)?
            }
        };
        let users = platform::open_lock_file(&dir.join("users.lock"))
            .and_then(|f| f.lock_shared().map(|()| f))
            .map_err(|e| format!("cannot lock {}: {e}", dir.join("users.lock").display()))?;
        drop(setup);
        return Ok((state, users));
    }
}

fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Stops what an earlier run left behind (its reaper killed, a server dead) and empties the
/// folder, keeping the lock files.
fn clear_leftovers(dir: &Path, tools: &Tools) {
    if let Some(old) = State::read(dir) {
        for pid in [old.reaper, old.nats_pid] {
            if process_alive(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    if tools.wants.postgres
        && let Ok(cluster) = Cluster::new(dir.join("pg"))
        && cluster.is_running()
    {
        let _ = cluster.stop("immediate");
    }
    for name in ["state", "pg", "nats"] {
        let path = dir.join(name);
        let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
    }
}

/// Starts the wanted servers and their reaper; called with `setup.lock` held.
fn start(dir: &Path, tools: &Tools) -> Result<State, String> {
    let mut state = State::default();
    let mut stop_postgres: Vec<String> = Vec::new();
    if tools.wants.postgres {
        let cluster = Cluster::new(dir.join("pg"))?;
        cluster.init(false)?;
        state.pg_port = platform::free_port().map_err(|e| e.to_string())?;
        cluster.start(&test_cluster_options(&cluster, state.pg_port))?;
        stop_postgres = stop_command(&cluster);
    }
    if let Some(bin) = &tools.nats_server {
        let store = dir.join("nats");
        fs::create_dir_all(&store)
            .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
        state.nats_port = platform::free_port().map_err(|e| e.to_string())?;
        let child = nats::spawn(bin, state.nats_port, &store)
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        state.nats_pid = child.id();
        wait_accepting(state.nats_port, "nats-server")?;
    }
    state.reaper = spawn_reaper(dir, state.nats_pid, &stop_postgres)?;
    state.write(dir)?;
    Ok(state)
}

/// The test cluster's server flags: loopback on `port`, no fsync (see the module's docs), and
/// room for every test's pool at once.
fn test_cluster_options(cluster: &Cluster, port: u16) -> String {
    format!(
        "{} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
         -c max_connections=300",
        cluster.loopback_options(port)
    )
}

/// `pg_ctl stop -m immediate` for the cluster, as its user, as a command line for the reaper.
fn stop_command(cluster: &Cluster) -> Vec<String> {
    let pg_ctl = cluster.bin().join("pg_ctl").display().to_string();
    let data = cluster.data.display().to_string();
    let mut command: Vec<String> = Vec::new();
    if cluster.runs_as_postgres() {
        command.extend(["runuser", "-u", "postgres", "--"].map(String::from));
    }
    command.extend([
        pg_ctl,
        "stop".into(),
        "-m".into(),
        "immediate".into(),
        "-D".into(),
        data,
    ]);
    command
}

fn wait_accepting(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not accept connections on port {port} in 15 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The reaper's loop (see the module's docs). Arguments: the folder, the NATS PID (0: none),
/// then the command that stops Postgres (none: no Postgres).
const REAPER: &str = r#"
dir=$1; nats_pid=$2; idle_secs=$3; shift 3
idle=0
while :; do
  sleep 1
  if flock -n "$dir/users.lock" true; then idle=$((idle + 1)); else idle=0; fi
  [ "$idle" -ge "$idle_secs" ] || continue
  exec 9>>"$dir/setup.lock"
  flock 9
  if flock -n "$dir/users.lock" true; then
    rm -f "$dir/state"
    [ "$nats_pid" = 0 ] || kill -9 "$nats_pid" 2>/dev/null
    [ $# -eq 0 ] || "$@" >/dev/null 2>&1
    rm -rf "$dir"
    exit 0
  fi
  exec 9>&-
  idle=0
done
"#;

fn spawn_reaper(dir: &Path, nats_pid: u32, stop_postgres: &[String]) -> Result<u32, String> {
    let mut cmd = Command::new("setsid");
    cmd.args(["sh", "-c", REAPER, "windi-test-reaper"])
        .arg(dir)
        .arg(nats_pid.to_string())
        .arg(IDLE_SECS.to_string())
        .args(stop_postgres)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the reaper of the test servers (setsid): {e}"))?;
    Ok(child.id())
}
