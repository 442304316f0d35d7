//! What this machine keeps about desktops it did not start in this process: a pool
//! member's credentials (left by its filler for its leaser) and who leased it.

use std::path::PathBuf;

/// Where selfagent keeps per-user state: `$XDG_STATE_HOME/selfagent`, else
/// `~/.local/state/selfagent`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("selfagent")
}

pub(crate) fn secrets_file(id: &str) -> PathBuf {
    state_dir().join("pool").join(id)
}

pub(crate) fn lease_file(id: &str) -> PathBuf {
    state_dir().join("leases").join(id)
}

/// Writes a file only this user can read.
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Whether a leased member's leaser is known to be gone (for `prune`).
pub fn lease_orphaned(id: &str) -> bool {
    match std::fs::read_to_string(lease_file(id)) {
        Ok(owner) => {
            let owner = owner.trim();
            owner != "detached" && crate::process::owner_gone(owner)
        }
        // Leased elsewhere, or by a selfagent that kept no record: its TTL applies.
        Err(_) => false,
    }
}

/// Forgets what this machine kept about a container (after its removal).
pub fn forget(id: &str) {
    let _ = std::fs::remove_file(secrets_file(id));
    let _ = std::fs::remove_file(lease_file(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/secret");
        write_private(&path, "x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }
}
