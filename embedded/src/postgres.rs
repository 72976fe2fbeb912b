//! A Postgres cluster run with the machine's server binaries ([`Cluster`]), and windi's own
//! cluster on top of it ([`EmbeddedPostgres`]): in `WINDI_DATA_DIR` (default `./.windi`),
//! listening only on a Unix socket inside its own folder, owned by whichever `windi` process
//! started it.
//!
//! Ownership is a lock, not a PID file: the starter holds an exclusive lock on
//! `<data dir>/owner.lock` for as long as it lives, and the kernel drops it when the process
//! ends however it ends (SIGKILL included). A `windi` that finds the cluster running and the
//! lock held uses the cluster and leaves it alone; one that finds it running and the lock free
//! knows its starter died without stopping it, takes the lock and adopts it. `start.lock`
//! makes starting and stopping one step each, so no command sees a cluster that is halfway.
//!
//! Trust authentication is safe for windi's cluster because only the socket exists, in a
//! folder of mode 0700 that only the cluster's owner (and root) can enter; no TCP port is
//! opened.

use std::{
    fs::{self, File},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::platform::{self, Packages};

/// The longest socket path Postgres accepts is 107 bytes (`sun_path`); the socket file is
/// `<dir>/.s.PGSQL.5432`, 16 bytes of it.
const MAX_SOCKET_DIR_LEN: usize = 107 - 16;

/// Where the server binaries were looked for, in order: `POSTGRES_BIN_DIR`, Debian's and
/// Ubuntu's `/usr/lib/postgresql/<version>/bin` (newest first), Homebrew's, then `PATH`.
pub fn find_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("POSTGRES_BIN_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir)).filter(|d| has_all(d));
    }
    let mut versioned: Vec<(u32, PathBuf)> = Vec::new();
    for root in ["/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt"] {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .trim_start_matches("postgresql@")
                .trim_start_matches("postgresql");
            let major = version.split('.').next().and_then(|v| v.parse().ok());
            let bin = entry.path().join("bin");
            if (root == "/usr/lib/postgresql" || name.starts_with("postgresql")) && has_all(&bin) {
                versioned.push((major.unwrap_or(0), bin));
            }
        }
    }
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    if let Some((_, bin)) = versioned.into_iter().next() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_all(d)))
}

/// The one command that installs the server binaries on this platform.
pub fn install_hint() -> String {
    Packages::of_this_machine().install_command(&["postgresql"])
}

/// A cluster folder and the binaries that run it, as the `postgres` system user when this
/// process is root (`initdb` and `postgres` refuse root).
#[derive(Debug)]
pub struct Cluster {
    /// The data directory (`PGDATA`).
    pub data: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// The cluster in `data` (made by [`Cluster::init`]). Fails, saying what to do, when no
    /// server binaries are installed, or when the user the cluster would run as cannot reach
    /// `data`.
    pub fn new(data: PathBuf) -> Result<Self, String> {
        let bin = find_binaries().ok_or_else(|| {
            format!(
                "no PostgreSQL server binaries (initdb, pg_ctl) were found: install them with \
                 `{}` (POSTGRES_BIN_DIR names a folder of them)",
                install_hint()
            )
        })?;
        let parent = data.parent().unwrap_or(Path::new("/"));
        let uid = platform::effective_uid(parent)
            .map_err(|e| format!("cannot write in {}: {e}", parent.display()))?;
        let owner = if uid == 0 {
            let (uid, gid) = platform::system_user("postgres").ok_or(
                "this runs as root and Postgres refuses to: create the unprivileged user it runs \
                 the cluster as with `useradd --system postgres`, or run as an ordinary user",
            )?;
            if let Some((dir, mode)) = platform::first_closed_ancestor(&data, uid, gid) {
                return Err(format!(
                    "Postgres refuses to run as root, so its cluster runs as the `postgres` \
                     system user, and that user cannot enter {} (mode {mode:04o}) to reach {}: \
                     keep the data in a folder it can reach (e.g. /var/tmp), or let it in with \
                     `chmod o+x {}`",
                    dir.display(),
                    data.display(),
                    dir.display()
                ));
            }
            Some((uid, gid))
        } else {
            None
        };
        Ok(Self { data, bin, owner })
    }

    /// Whether the cluster runs as the `postgres` system user (this process is root).
    pub fn runs_as_postgres(&self) -> bool {
        self.owner.is_some()
    }

    /// The folder of the server binaries.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// One of the server's programs, as the cluster's user, from a folder it can enter.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // pg_ctl checks its working directory: one the owner can always enter.
        cmd.current_dir(if self.data.exists() {
            &self.data
        } else {
            Path::new("/")
        })
        .stdin(Stdio::null())
        .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Runs `initdb` unless the cluster exists; true if it made one. `durable: false` skips
    /// the fsyncs of `initdb` (a cluster thrown away after the tests).
    pub fn init(&self, durable: bool) -> Result<bool, String> {
        if self.data.join("PG_VERSION").exists() {
            return Ok(false);
        }
        fs::create_dir_all(&self.data)
            .and_then(|()| fs::set_permissions(&self.data, fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot create {}: {e}", self.data.display()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&self.data, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to postgres: {e}", self.data.display()))?;
        }
        // C.UTF-8 sorts bytes like C but knows letters beyond ASCII, so `lower()` folds
        // Cyrillic names as it does Latin ones; plain C where the system lacks it (macOS).
        let mut last = String::new();
        for locale in ["C.UTF-8", "C"] {
            let mut cmd = self.command("initdb");
            cmd.arg("-D").arg(&self.data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ]);
            cmd.arg(format!("--locale={locale}"));
            if !durable {
                cmd.arg("--no-sync");
            }
            match run(cmd, "initdb") {
                Ok(()) => return Ok(true),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// True while a server runs on this data directory (`pg_ctl status`: its PID file names
    /// a live process).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data);
        cmd.output().is_ok_and(|o| o.status.success())
    }

    /// Server flags for a cluster reached over TCP on 127.0.0.1:`port`, its Unix socket in its
    /// own folder (the tests' clusters; windi's own listens on the socket only).
    pub fn loopback_options(&self, port: u16) -> String {
        format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}'",
            self.data.display()
        )
    }

    /// Starts the server with `options` (postgres command-line flags) and waits until it
    /// accepts connections; its log goes to `server.log` in the data directory.
    pub fn start(&self, options: &str) -> Result<(), String> {
        let log = self.data.join("server.log");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-s", "-o", options, "-l"])
            .arg(&log);
        run(cmd, "pg_ctl start").map_err(|e| format!("{e}; see {}", log.display()))
    }

    /// Stops the server: `fast` closes connections and loses nothing committed; `immediate`
    /// is a crash, recovered from the WAL on the next start.
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-s"]);
        run(cmd, "pg_ctl stop")
    }
}

/// Runs a command to success, or says what it printed.
fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// windi's own running cluster. Stopped when dropped, if this process started or adopted it.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    cluster: Cluster,
    /// Held while this process owns the cluster; `None` when another live `windi` does.
    owner_lock: Option<File>,
    start_lock: PathBuf,
    /// `postgres://postgres@localhost/windi?host=<cluster>`: the socket directory as the host.
    pub url: String,
}

/// How a start found the cluster, for the one line it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No cluster yet: made and started; this process owns it.
    Created,
    /// Not running: started; this process owns it.
    Started,
    /// Running with no live owner (its starter was killed): this process owns it now.
    Adopted,
    /// Running and owned by another live `windi`: used, left running.
    Shared,
}

impl EmbeddedPostgres {
    /// Makes (first run), starts, adopts or joins the cluster in `data_dir`. Every error says
    /// what to do.
    pub fn start(data_dir: &Path) -> Result<Self, String> {
        let data_dir = prepare_data_dir(data_dir)?;
        let cluster = Cluster::new(data_dir.join("postgres")).map_err(|e| {
            format!(
                "DATABASE_URL is not set, so windi runs its own Postgres, but {e} (or set \
                 WINDI_DATA_DIR elsewhere, or DATABASE_URL)"
            )
        })?;
        if cluster.runs_as_postgres() {
            // The owner must be able to reach its cluster inside the data folder.
            let _ = fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755));
        }
        let start_lock = data_dir.join("start.lock");
        let _starting = platform::lock_exclusive(&start_lock)
            .map_err(|e| format!("cannot lock {}: {e}", start_lock.display()))?;
        let owner_path = data_dir.join("owner.lock");
        let owner_lock = platform::open_lock_file(&owner_path)
            .map_err(|e| format!("cannot open {}: {e}", owner_path.display()))?;
        let owns = owner_lock.try_lock().is_ok();
        let created = cluster.init(true)?;
        let running = cluster.is_running();
        if !running {
            cluster.start(&socket_only_options(&cluster.data))?;
        }
        let found = match (owns, created, running) {
            (_, true, _) => Found::Created,
            (true, false, true) => Found::Adopted,
            (false, false, true) => Found::Shared,
            (_, false, false) => Found::Started,
        };
        let this = Self {
            url: format!(
                "postgres://postgres@localhost/windi?host={}",
                cluster.data.display().to_string().replace(' ', "%20")
            ),
            cluster,
            owner_lock: owns.then_some(owner_lock),
            start_lock,
        };
        eprintln!("{}", this.describe(found));
        Ok(this)
    }

    /// Whether this process stops the cluster when it ends.
    pub fn owns(&self) -> bool {
        self.owner_lock.is_some()
    }

    fn describe(&self, found: Found) -> String {
        let what = match found {
            Found::Created => "created and started its own",
            Found::Started => "started its own",
            Found::Adopted => {
                "adopted its own (left running by a windi that ended without stopping it)"
            }
            Found::Shared => "is using its own",
        };
        let user = if self.cluster.runs_as_postgres() {
            " as user postgres"
        } else {
            ""
        };
        let ends = if self.owns() {
            "it stops when this windi does"
        } else {
            "another windi started it and stops it; this command leaves it running"
        };
        format!(
            "windi: DATABASE_URL is not set: {what} Postgres ({}){user} in {}, on a Unix socket \
             there; {ends}. Set DATABASE_URL to use another.",
            self.cluster.bin().display(),
            self.cluster.data.display(),
        )
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if self.owner_lock.is_none() {
            return;
        }
        // Under the start lock, so a windi starting now waits and then starts it afresh.
        let _stopping = platform::lock_exclusive(&self.start_lock);
        if self.cluster.is_running()
            && let Err(e) = self.cluster.stop("fast")
        {
            eprintln!("windi: stopping its Postgres: {e}");
        }
    }
}

/// Creates `data_dir` and answers its absolute path, short enough for a socket path.
fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create WINDI_DATA_DIR {}: {e}", data_dir.display()))?;
    let data_dir = data_dir
        .canonicalize()
        .map_err(|e| format!("WINDI_DATA_DIR {}: {e}", data_dir.display()))?;
    let cluster = data_dir.join("postgres");
    if cluster.as_os_str().len() > MAX_SOCKET_DIR_LEN {
        return Err(format!(
            "WINDI_DATA_DIR {} is too long for a Unix socket path (at most {} bytes); choose a \
             shorter one",
            data_dir.display(),
            MAX_SOCKET_DIR_LEN - "/postgres".len()
        ));
    }
    Ok(data_dir)
}

/// No TCP port: the socket in the cluster's own 0700 folder is the only way in.
fn socket_only_options(data: &Path) -> String {
    format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c unix_socket_permissions=0700",
        data.display()
    )
}
