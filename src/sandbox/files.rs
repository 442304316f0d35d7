//! Files in and out of a sandbox through the Docker archive API (tar), byte for byte.
//!
//! Paths in the sandbox may be absolute, `~`-relative or relative to the user's home.
//! Written files belong to the desktop's user (uid 1000), so the agent can change them.

use super::{Doing, Sandbox, SandboxError};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::TryStreamExt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

pub const HOME: &str = "/home/user";
const UID: u64 = 1000;

/// The absolute path in the sandbox for `~/x`, `x` or `/x`.
pub fn sandbox_path(path: &str) -> Result<String, SandboxError> {
    let path = path.trim();
    if path.is_empty() {
        return Err(SandboxError::Invalid("empty path".into()));
    }
    let joined = if path == "~" {
        PathBuf::from(HOME)
    } else if let Some(rest) = path.strip_prefix("~/") {
        Path::new(HOME).join(rest)
    } else {
        Path::new(HOME).join(path)
    };
    // Resolve `.` and `..` lexically; `..` never climbs above `/`.
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

fn split_parent(path: &str) -> (String, String) {
    let p = Path::new(path);
    let parent = p
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (parent, name)
}

/// The first entry of a file's archive: its bytes, or where it links to.
enum Entry {
    Data(Vec<u8>),
    Link(String),
    /// Docker found the path, then it was gone when the archive was written (a file being
    /// renamed or deleted right then).
    Vanished,
}

fn first_entry(path: &str, tar: &[u8]) -> Result<Entry, SandboxError> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = archive
        .entries()
        .map_err(|e| SandboxError::io(format!("reading {path}"), e))?;
    let Some(entry) = entries.next() else {
        return Ok(Entry::Vanished);
    };
    let mut entry = entry.map_err(|e| SandboxError::io(format!("reading {path}"), e))?;
    match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| SandboxError::io(format!("reading {path}"), e))?;
            Ok(Entry::Data(data))
        }
        tar::EntryType::Directory => Err(SandboxError::Invalid(format!("{path} is a directory"))),
        tar::EntryType::Symlink => Ok(Entry::Link(
            entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )),
        other => Err(SandboxError::Invalid(format!(
            "{path} is not a regular file ({other:?})"
        ))),
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(UID);
    h.set_gid(UID);
    h.set_mtime(super::now_secs());
    h
}

impl Sandbox {
    /// Writes `data` to `path` (mode 0644), creating missing parent directories.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), SandboxError> {
        self.write_file_mode(path, data, 0o644).await
    }

    pub async fn write_file_mode(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), SandboxError> {
        let path = sandbox_path(path)?;
        let (parent, name) = split_parent(&path);
        if name.is_empty() {
            return Err(SandboxError::Invalid(format!(
                "'{path}' is not a file path"
            )));
        }
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
        builder
            .append_data(&mut h, &name, data)
            .map_err(|e| SandboxError::io(format!("packing {path}"), e))?;
        let tar = builder
            .into_inner()
            .map_err(|e| SandboxError::io(format!("packing {path}"), e))?;
        self.put_tar(&parent, tar, &path).await
    }

    /// Uploads a tar archive into directory `parent`, creating it when missing.
    async fn put_tar(&self, parent: &str, tar: Vec<u8>, what: &str) -> Result<(), SandboxError> {
        let upload = |tar: Vec<u8>| {
            self.engine.docker().upload_to_container(
                &self.id,
                Some(
                    UploadToContainerOptionsBuilder::default()
                        .path(parent)
                        .build(),
                ),
                bollard::body_full(tar.into()),
            )
        };
        match upload(tar.clone()).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let out = self
                    .exec(
                        &["mkdir", "-p", "--", parent],
                        &super::ExecOptions::default(),
                    )
                    .await?;
                if !out.success() {
                    return Err(SandboxError::io(
                        format!("creating directory {parent} for {what}"),
                        out.stderr_text().trim(),
                    ));
                }
                upload(tar)
                    .await
                    .doing(|| format!("writing {what} in sandbox {}", self.short_id()))
            }
            Err(e) => Err(SandboxError::Docker {
                doing: format!("writing {what} in sandbox {}", self.short_id()),
                error: e,
            }),
        }
    }

    async fn get_tar(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let chunks: Vec<bytes::Bytes> = self
            .engine
            .docker()
            .download_from_container(
                &self.id,
                Some(
                    DownloadFromContainerOptionsBuilder::default()
                        .path(path)
                        .build(),
                ),
            )
            .try_collect()
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message,
                } if !message.to_ascii_lowercase().contains("no such container") => {
                    SandboxError::NoSuchFile {
                        sandbox: self.short_id().to_owned(),
                        path: path.to_owned(),
                    }
                }
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => SandboxError::NotRunning {
                    id: self.short_id().to_owned(),
                    status: "gone".into(),
                },
                e => SandboxError::Docker {
                    doing: format!("reading {path} from sandbox {}", self.short_id()),
                    error: e,
                },
            })?;
        Ok(chunks.concat())
    }

    /// The bytes of a regular file (a symbolic link is followed once).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        let path = sandbox_path(path)?;
        let tar = self.get_tar(&path).await?;
        let gone = |path: &str| SandboxError::NoSuchFile {
            sandbox: self.short_id().to_owned(),
            path: path.to_owned(),
        };
        match first_entry(&path, &tar)? {
            Entry::Data(data) => Ok(data),
            Entry::Vanished => Err(gone(&path)),
            Entry::Link(target) => {
                // Docker archives the link itself.
                let (parent, _) = split_parent(&path);
                let resolved = if target.starts_with('/') {
                    target
                } else {
                    format!("{parent}/{target}")
                };
                let tar = self.get_tar(&resolved).await?;
                match first_entry(&resolved, &tar)? {
                    Entry::Data(data) => Ok(data),
                    Entry::Vanished => Err(gone(&resolved)),
                    Entry::Link(_) => Err(SandboxError::Invalid(format!(
                        "{path} is a link to a link; read {resolved} instead"
                    ))),
                }
            }
        }
    }

    /// Copies a local file or directory to `dest` in the sandbox (`dest/` puts it inside
    /// that directory under its own name). Returns the bytes of file data sent.
    pub async fn upload(&self, local: &Path, dest: &str) -> Result<u64, SandboxError> {
        let into_dir = dest.ends_with('/');
        let dest = sandbox_path(dest)?;
        let local_name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                SandboxError::Invalid(format!("{} has no file name", local.display()))
            })?;
        let (parent, name) = if into_dir {
            (dest.clone(), local_name)
        } else {
            split_parent(&dest)
        };
        let local = local.to_owned();
        let what = format!("{}", local.display());
        let (tar, bytes) = tokio::task::spawn_blocking(move || pack(&local, &name))
            .await
            .map_err(|e| SandboxError::io(format!("packing {what}"), e))??;
        self.put_tar(&parent, tar, &dest).await?;
        Ok(bytes)
    }

    /// Copies a file or directory from the sandbox to `local` (into it, when `local` is an
    /// existing directory). Returns the bytes of file data received.
    pub async fn download(&self, src: &str, local: &Path) -> Result<u64, SandboxError> {
        let src = sandbox_path(src)?;
        let tar = self.get_tar(&src).await?;
        let (_, src_name) = split_parent(&src);
        let target = if local.is_dir() {
            local.join(&src_name)
        } else {
            local.to_owned()
        };
        tokio::task::spawn_blocking(move || unpack(&tar, &src_name, &target))
            .await
            .map_err(|e| SandboxError::io("unpacking", e))?
    }
}

/// A tar of `local` whose top-level entry is called `name`.
fn pack(local: &Path, name: &str) -> Result<(Vec<u8>, u64), SandboxError> {
    let err = |e: std::io::Error| SandboxError::io(format!("reading {}", local.display()), e);
    let meta = std::fs::metadata(local).map_err(err)?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut bytes = 0;
    let mut stack = vec![(local.to_owned(), PathBuf::from(name), meta)];
    while let Some((path, rel, meta)) = stack.pop() {
        if meta.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            builder
                .append_data(&mut h, &rel, std::io::empty())
                .map_err(err)?;
            for entry in std::fs::read_dir(&path).map_err(err)? {
                let entry = entry.map_err(err)?;
                let meta = entry.metadata().map_err(err)?;
                stack.push((entry.path(), rel.join(entry.file_name()), meta));
            }
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            let mut h = header(tar::EntryType::Regular, meta.len(), mode);
            let file = std::fs::File::open(&path).map_err(err)?;
            builder.append_data(&mut h, &rel, file).map_err(err)?;
            bytes += meta.len();
        }
    }
    Ok((builder.into_inner().map_err(err)?, bytes))
}

/// Extracts a Docker archive whose top-level entry is `src_name` to `target`.
fn unpack(tar: &[u8], src_name: &str, target: &Path) -> Result<u64, SandboxError> {
    let err = |e: std::io::Error| SandboxError::io(format!("writing {}", target.display()), e);
    let mut archive = tar::Archive::new(tar);
    let mut bytes = 0;
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        let rel = path.strip_prefix(src_name).unwrap_or(&path).to_owned();
        if rel
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
        {
            continue;
        }
        let dest = if rel.as_os_str().is_empty() {
            target.to_owned()
        } else {
            target.join(&rel)
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&dest).map_err(err)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                bytes += entry.size();
                entry.unpack(&dest).map_err(err)?;
            }
            tar::EntryType::Symlink => {
                entry.unpack(&dest).map_err(err)?;
            }
            _ => {}
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn sandbox_paths_resolve_against_home() {
        assert_eq!(sandbox_path("notes.txt").unwrap(), "/home/user/notes.txt");
        assert_eq!(sandbox_path("~/a/b").unwrap(), "/home/user/a/b");
        assert_eq!(sandbox_path("~").unwrap(), "/home/user");
        assert_eq!(sandbox_path("/tmp/./x/../y").unwrap(), "/tmp/y");
        assert_eq!(sandbox_path("/../../etc").unwrap(), "/etc");
        assert!(sandbox_path(" ").is_err());
    }

    #[test]
    fn pack_and_unpack_round_trip_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.bin"), [0u8, 1, 2, 255]).unwrap();
        std::fs::write(src.join("sub/b.txt"), "héllo").unwrap();
        let (tar, bytes) = pack(&src, "tree").unwrap();
        assert_eq!(bytes, 4 + "héllo".len() as u64);
        let out = dir.path().join("copy");
        assert_eq!(unpack(&tar, "tree", &out).unwrap(), bytes);
        assert_eq!(
            std::fs::read(out.join("a.bin")).unwrap(),
            vec![0, 1, 2, 255]
        );
        assert_eq!(
            std::fs::read_to_string(out.join("sub/b.txt")).unwrap(),
            "héllo"
        );
    }
}
