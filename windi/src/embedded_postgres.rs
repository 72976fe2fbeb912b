//! windi's own Postgres, for `DATABASE_URL` unset: a cluster in `WINDI_DATA_DIR` (default
//! `./.windi`) made with the machine's server binaries, started at start-up, stopped on exit,
//! reused on the next run, listening only on a Unix socket inside its own folder.
//!
//! Why not the `postgresql_embedded` crate: its value is downloading a PostgreSQL build, which
//! cannot happen here (no network but package registries), and pointed at installed binaries
//! it runs them as the current user, while `initdb` refuses root, which is what CI and
//! containers run as. What is left is `initdb` once and `pg_ctl start`/`stop`, done here, with
//! the cluster owned by the unprivileged `postgres` system user when windi runs as root.
//!
//! Trust authentication is safe here because only the socket exists, in a folder of mode 0700
//! that only the cluster's owner (and root) can enter; no TCP port is opened.

use std::{
    fs,
    os::unix::{fs::MetadataExt, fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The longest socket path Postgres accepts is 107 bytes (`sun_path`); the socket file is
/// `<dir>/.s.PGSQL.5432`, 16 bytes of it.
const MAX_SOCKET_DIR_LEN: usize = 107 - 16;

/// A running cluster, stopped when dropped (so on every way out of `main`).
#[derive(Debug)]
pub struct EmbeddedPostgres {
    cluster: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// `postgres://postgres@localhost/windi?host=<cluster>`: the socket directory as the host.
    pub url: String,
}

/// Where the server binaries were looked for, in order: `POSTGRES_BIN_DIR`, Debian's and
/// Ubuntu's `/usr/lib/postgresql/<version>/bin` (newest first), Homebrew's, then `PATH`.
fn find_binaries() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = windi_shared::config::optional("POSTGRES_BIN_DIR") {
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
fn install_hint() -> &'static str {
    if cfg!(target_os = "macos") {
        "brew install postgresql@16"
    } else if Path::new("/etc/debian_version").exists() {
        "sudo apt-get install postgresql"
    } else if Path::new("/etc/fedora-release").exists() || Path::new("/etc/redhat-release").exists()
    {
        "sudo dnf install postgresql-server"
    } else if Path::new("/etc/alpine-release").exists() {
        "sudo apk add postgresql"
    } else if Path::new("/etc/arch-release").exists() {
        "sudo pacman -S postgresql"
    } else {
        "install PostgreSQL's server package (it provides initdb and pg_ctl)"
    }
}

/// The uid this process runs as, read without `unsafe`: the owner of a file it just made.
fn effective_uid(probe_dir: &Path) -> std::io::Result<u32> {
    let probe = probe_dir.join(format!(".uid-probe-{}", std::process::id()));
    fs::write(&probe, b"")?;
    let uid = fs::metadata(&probe)?.uid();
    fs::remove_file(&probe)?;
    Ok(uid)
}

/// uid and gid of a local user, from `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

impl EmbeddedPostgres {
    /// Makes (first run) or reuses the cluster in `data_dir` and starts it. Every error says
    /// what to do.
    pub fn start(data_dir: &Path) -> Result<Self, String> {
        let bin = find_binaries().ok_or_else(|| {
            format!(
                "DATABASE_URL is not set and no PostgreSQL server binaries (initdb, pg_ctl) were \
                 found to run one: install them with `{}`, or set DATABASE_URL \
                 (POSTGRES_BIN_DIR names a folder of them)",
                install_hint()
            )
        })?;
        fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create WINDI_DATA_DIR {}: {e}", data_dir.display()))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|e| format!("WINDI_DATA_DIR {}: {e}", data_dir.display()))?;
        let cluster = data_dir.join("postgres");
        if cluster.as_os_str().len() > MAX_SOCKET_DIR_LEN {
            return Err(format!(
                "WINDI_DATA_DIR {} is too long for a Unix socket path (at most {} bytes); \
                 choose a shorter one",
                data_dir.display(),
                MAX_SOCKET_DIR_LEN - "/postgres".len()
            ));
        }
        let uid = effective_uid(&data_dir)
            .map_err(|e| format!("cannot write in WINDI_DATA_DIR {}: {e}", data_dir.display()))?;
        // initdb and postgres refuse to run as root: the cluster then belongs to `postgres`.
        let owner = if uid == 0 {
            let owner = system_user("postgres").ok_or(
                "windi runs as root and Postgres refuses to: create the unprivileged user it \
                 runs the cluster as with `useradd --system postgres`, or run windi as an \
                 ordinary user",
            )?;
            // The owner must be able to reach its cluster inside the data folder.
            let _ = fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o755));
            Some(owner)
        } else {
            None
        };
        let this = Self {
            url: format!(
                "postgres://postgres@localhost/windi?host={}",
                cluster.display().to_string().replace(' ', "%20")
            ),
            cluster,
            bin,
            owner,
        };
        let created = this.init()?;
        let reused = this.is_running();
        if !reused {
            this.pg_ctl_start()?;
        }
        let what = match (created, reused) {
            (true, _) => "created and started",
            (false, true) => "reused the already running",
            (false, false) => "started",
        };
        let user = if this.owner.is_some() {
            " as user postgres"
        } else {
            ""
        };
        eprintln!(
            "windi: DATABASE_URL is not set: {what} its own Postgres ({}){user} in {}, on a Unix \
             socket there; it stops when windi does. Set DATABASE_URL to use another.",
            this.bin.display(),
            this.cluster.display(),
        );
        Ok(this)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        // The cluster folder: a directory the owner can always enter (pg_ctl checks its cwd).
        cmd.current_dir(if self.cluster.exists() {
            &self.cluster
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

    fn run(&self, mut cmd: Command, what: &str) -> Result<(), String> {
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

    /// Runs `initdb` unless the cluster exists. True if it made one.
    fn init(&self) -> Result<bool, String> {
        if self.cluster.join("PG_VERSION").exists() {
            return Ok(false);
        }
        fs::create_dir_all(&self.cluster)
            .and_then(|()| fs::set_permissions(&self.cluster, fs::Permissions::from_mode(0o700)))
            .map_err(|e| format!("cannot create {}: {e}", self.cluster.display()))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&self.cluster, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to postgres: {e}", self.cluster.display()))?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.cluster).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        self.run(cmd, "initdb")?;
        Ok(true)
    }

    fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.cluster);
        cmd.output().is_ok_and(|o| o.status.success())
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c unix_socket_permissions=0700",
            self.cluster.display()
        );
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.cluster)
            .args(["-w", "-t", "60", "-s", "-o", &options, "-l"])
            .arg(self.cluster.join("server.log"));
        self.run(cmd, "pg_ctl start")
            .map_err(|e| format!("{e}; see {}", self.cluster.join("server.log").display()))
    }

    /// Stops the server (fast: open connections are closed, nothing committed is lost).
    pub fn stop(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.cluster)
            .args(["-m", "fast", "-w", "-s"]);
        if let Err(e) = self.run(cmd, "pg_ctl stop") {
            eprintln!("windi: stopping its Postgres: {e}");
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
