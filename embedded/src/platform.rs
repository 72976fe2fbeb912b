//! What the servers need to know of the machine: who we run as, the `postgres` system user,
//! folders that user can enter, free ports, file locks, and the one command that installs a
//! missing package.

use std::{
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The uid this process runs as, read without `unsafe`: the owner of a file it just made.
pub fn effective_uid(probe_dir: &Path) -> std::io::Result<u32> {
    let probe = probe_dir.join(format!(".uid-probe-{}", std::process::id()));
    fs::write(&probe, b"")?;
    let uid = fs::metadata(&probe)?.uid();
    fs::remove_file(&probe)?;
    Ok(uid)
}

/// uid and gid of a local user, from `/etc/passwd`.
pub fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// The first folder above `path` (itself excluded) that a user with `uid`/`gid` cannot enter,
/// with its mode: e.g. root's home folder (0700) for the `postgres` user. Supplementary groups
/// are not looked at, so a folder open to one of them only is reported too.
pub fn first_closed_ancestor(path: &Path, uid: u32, gid: u32) -> Option<(PathBuf, u32)> {
    path.ancestors().skip(1).find_map(|dir| {
        let meta = fs::metadata(dir).ok()?;
        let mode = meta.mode() & 0o777;
        let enters = if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!enters).then(|| (dir.to_path_buf(), mode))
    })
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Opens (creating) `path` and takes an exclusive lock on it, waiting for other holders; the
/// lock is released when the file is closed, which the kernel does for a killed process too.
pub fn lock_exclusive(path: &Path) -> std::io::Result<File> {
    let file = open_lock_file(path)?;
    file.lock()?;
    Ok(file)
}

/// Opens (creating) a lock file without locking it.
pub fn open_lock_file(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// The machine's package manager, where one is recognised: how to install a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packages {
    Apt,
    Dnf,
    Brew,
    Apk,
    Pacman,
    Unknown,
}

impl Packages {
    pub fn of_this_machine() -> Self {
        if cfg!(target_os = "macos") {
            Self::Brew
        } else if Path::new("/etc/debian_version").exists() {
            Self::Apt
        } else if Path::new("/etc/fedora-release").exists()
            || Path::new("/etc/redhat-release").exists()
        {
            Self::Dnf
        } else if Path::new("/etc/alpine-release").exists() {
            Self::Apk
        } else if Path::new("/etc/arch-release").exists() {
            Self::Pacman
        } else {
            Self::Unknown
        }
    }

    /// The one command that installs these packages (named as on Debian; mapped here).
    pub fn install_command(self, debian_names: &[&str]) -> String {
        let names: Vec<&str> = debian_names.iter().map(|n| self.name_of(n)).collect();
        let names = names.join(" ");
        match self {
            Self::Apt => format!("sudo apt-get install {names}"),
            Self::Dnf => format!("sudo dnf install {names}"),
            Self::Brew => format!("brew install {names}"),
            Self::Apk => format!("sudo apk add {names}"),
            Self::Pacman => format!("sudo pacman -S {names}"),
            Self::Unknown => format!("install these packages: {names}"),
        }
    }

    fn name_of(self, debian: &str) -> &str {
        match (self, debian) {
            (Self::Brew, "postgresql") => "postgresql@16",
            (Self::Dnf, "postgresql") => "postgresql-server",
            (Self::Brew, "chromium") => "--cask chromium",
            (Self::Brew | Self::Dnf | Self::Apk | Self::Pacman, "nodejs npm") => "nodejs",
            _ => debian,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_closed_to_others_is_found_above_the_path() {
        let base = std::env::temp_dir().join(format!("windi-platform-{}", std::process::id()));
        let closed = base.join("home");
        let inner = closed.join("project/.windi");
        fs::create_dir_all(&inner).unwrap_or_else(|e| panic!("{e}"));
        let set = |p: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        set(&base, 0o755);
        set(&closed, 0o700);
        // uid/gid that own nothing here: only the "others" bits count for them.
        let stranger = (u32::MAX - 7, u32::MAX - 7);
        let found = first_closed_ancestor(&inner, stranger.0, stranger.1);
        assert_eq!(found, Some((closed.clone(), 0o700)));
        set(&closed, 0o711);
        assert_eq!(first_closed_ancestor(&inner, stranger.0, stranger.1), None);
        let _ = fs::remove_dir_all(&base);
    }

    #[test]
    fn install_commands_name_each_platforms_packages() {
        assert_eq!(
            Packages::Apt.install_command(&["postgresql", "nats-server"]),
            "sudo apt-get install postgresql nats-server"
        );
        assert_eq!(
            Packages::Brew.install_command(&["postgresql"]),
            "brew install postgresql@16"
        );
    }
}
