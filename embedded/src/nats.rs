//! A `nats-server` with JetStream on a loopback port, from the machine's own binary.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::platform::Packages;

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the first on `PATH`, else the folders
/// packages put it in (Debian's is `/usr/sbin`, which an ordinary user's `PATH` lacks).
pub fn find_server() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin)).filter(|b| b.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/local/sbin",
                "/usr/local/bin",
                "/opt/homebrew/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
}

/// The one command that installs `nats-server` on this platform.
pub fn install_hint() -> String {
    Packages::of_this_machine().install_command(&["nats-server"])
}

/// Starts `nats-server -js` on 127.0.0.1:`port`, keeping JetStream's files in `store`.
/// Debian's packaged server does not enable JetStream unless told, hence `-js`.
pub fn spawn(bin: &Path, port: u16, store: &Path) -> std::io::Result<Child> {
    Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}
