//! Files in and out of a sandbox through the provider's archives (tar), byte for byte.
//!
//! Paths in the sandbox may be absolute, `~`-relative or relative to the user's home.
//! Written files belong to the desktop's user (uid 1000), so the agent can change them.
//!
//! Everything that comes out of a sandbox was made by the agent and is hostile input:
//! archives are streamed (never held whole in memory), reads stop at a limit, and
//! extraction on the host ([`unpack`]) writes only below its destination: it never follows
//! a link, never writes through an existing one, creates links only when they resolve
//! inside the copy, refuses special files, and keeps sparse files sparse.

use super::{Sandbox, SandboxError};
use futures_util::StreamExt;
use std::io::{Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

pub const HOME: &str = "/home/user";
/// The most [`Sandbox::read_file`] reads into memory.
pub const MAX_READ: u64 = 64 << 20;
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

fn first_entry(path: &str, tar: &mut dyn Read, limit: u64) -> Result<Entry, SandboxError> {
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
            let size = entry.size();
            if size > limit {
                return Err(SandboxError::TooLarge {
                    path: path.to_owned(),
                    size,
                    limit,
                });
            }
            let mut data = Vec::with_capacity(size as usize);
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

/// A [`Read`] over chunks arriving on a channel (the archive stream of a download).
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<Result<bytes::Bytes, SandboxError>>,
    chunk: bytes::Bytes,
    error: Option<SandboxError>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                Ok(Err(e)) => {
                    let message = e.to_string();
                    self.error = Some(e);
                    return Err(std::io::Error::other(message));
                }
                // The stream ended.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// What [`Sandbox::stat`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStat {
    File {
        size: u64,
    },
    Directory,
    Link(String),
    /// A device, pipe or socket.
    Special,
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
        let upload = |tar: Vec<u8>| self.engine.provider.put_archive(&self.id, parent, tar);
        let writing = |e: SandboxError| SandboxError::Provider {
            doing: format!("writing {what} in sandbox {}", self.short_id()),
            source: Box::new(e),
        };
        match upload(tar.clone()).await {
            Ok(()) => Ok(()),
            Err(SandboxError::NoSuchFile { .. }) => {
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
                upload(tar).await.map_err(writing)
            }
            Err(e @ SandboxError::NotRunning { .. }) => Err(e),
            Err(e) => Err(writing(e)),
        }
    }

    /// The archive of `path` as a stream of chunks, or why there is none.
    fn tar_stream(
        &self,
        path: &str,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, SandboxError>> + Send + 'static {
        self.engine.provider.get_archive(&self.id, path)
    }

    /// Feeds the archive of `path` to `consume` (on a blocking thread) as a reader, a few
    /// chunks at a time: memory stays bounded however large the file. `consume` may stop
    /// reading early; the transfer is then abandoned.
    async fn with_tar<T: Send + 'static>(
        &self,
        path: &str,
        consume: impl FnOnce(&mut dyn Read) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let stream = self.tar_stream(path);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bytes::Bytes, SandboxError>>(8);
        let pump = tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(chunk) = stream.next().await {
                let stop = chunk.is_err();
                // The reader stopped early: stop fetching.
                if tx.send(chunk).is_err() || stop {
                    break;
                }
            }
        });
        let result = tokio::task::spawn_blocking(move || {
            let mut reader = ChunkReader {
                rx,
                chunk: bytes::Bytes::new(),
                error: None,
            };
            let out = consume(&mut reader);
            // A transfer error explains a reader's error better than the reader does.
            match (out, reader.error.take()) {
                (Err(_), Some(e)) => Err(e),
                (out, _) => out,
            }
        })
        .await
        .map_err(|e| SandboxError::io(format!("reading {path}"), e))?;
        pump.abort();
        result
    }

    /// What is at `path`: a regular file's size, a directory, a link, or nothing. Reads only
    /// the archive's first header.
    pub async fn stat(&self, path: &str) -> Result<Option<FileStat>, SandboxError> {
        let path = sandbox_path(path)?;
        let shown = path.clone();
        match self
            .with_tar(&path, move |r| {
                let mut archive = tar::Archive::new(r);
                let mut entries = archive
                    .entries()
                    .map_err(|e| SandboxError::io(format!("reading {shown}"), e))?;
                let Some(entry) = entries.next() else {
                    return Ok(None);
                };
                let entry = entry.map_err(|e| SandboxError::io(format!("reading {shown}"), e))?;
                let h = entry.header();
                Ok(Some(match h.entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        FileStat::File { size: entry.size() }
                    }
                    tar::EntryType::Directory => FileStat::Directory,
                    tar::EntryType::Symlink => FileStat::Link(
                        entry
                            .link_name()
                            .ok()
                            .flatten()
                            .map(|t| t.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    _ => FileStat::Special,
                }))
            })
            .await
        {
            Err(SandboxError::NoSuchFile { .. }) => Ok(None),
            other => other,
        }
    }

    /// The bytes of a regular file (a symbolic link is followed once), up to [`MAX_READ`]
    /// bytes: larger files are an error (see [`Sandbox::read_file_limited`]).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.read_file_limited(path, MAX_READ).await
    }

    /// The bytes of a regular file (a symbolic link is followed once), if it holds at most
    /// `limit` bytes; a larger file is an error, found from its header, without reading
    /// its contents.
    pub async fn read_file_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, SandboxError> {
        let path = sandbox_path(path)?;
        let gone = |path: &str| SandboxError::NoSuchFile {
            sandbox: self.short_id().to_owned(),
            path: path.to_owned(),
        };
        let first = |p: String| move |r: &mut dyn Read| first_entry(&p, r, limit);
        match self.with_tar(&path, first(path.clone())).await? {
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
                let resolved = sandbox_path(&resolved)?;
                match self.with_tar(&resolved, first(resolved.clone())).await? {
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
    /// existing directory), streaming, refusing more than `limit` bytes of file data (the
    /// apparent size: sparse files count in full, and stay sparse on disk). See [`unpack`]
    /// for what is and is not written.
    pub async fn download(
        &self,
        src: &str,
        local: &Path,
        limit: u64,
    ) -> Result<CopyReport, SandboxError> {
        let src = sandbox_path(src)?;
        let (_, src_name) = split_parent(&src);
        let target = if local.is_dir() {
            local.join(&src_name)
        } else {
            local.to_owned()
        };
        self.with_tar(&src, move |r| unpack(r, &src_name, &target, limit))
            .await
    }
}

/// What a copy out of a sandbox wrote, and what it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Bytes of file data (apparent sizes).
    pub bytes: u64,
    pub files: u64,
    pub directories: u64,
    pub links: u64,
    /// Entries not copied, each with the reason.
    pub refused: Vec<String>,
}

/// The copy's own directories below `root`, made as needed. Every component below `root` is
/// checked without following links: a link or a file in the way is removed (the copy's
/// entry is a directory), so nothing is ever written through a link.
fn make_dirs(root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut at = root.to_owned();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&at)?;
                std::fs::create_dir(&at)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&at)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Where a link at `link` (a path below `root`, made already) really leads, if that is
/// inside `root`: resolved by the filesystem, so chains of links count; for a dangling link,
/// its parent directory is resolved instead.
fn link_stays_inside(root: &Path, link: &Path) -> bool {
    let Ok(root) = std::fs::canonicalize(root) else {
        return false;
    };
    match std::fs::canonicalize(link) {
        Ok(real) => real.starts_with(&root),
        Err(_) => {
            let Ok(target) = std::fs::read_link(link) else {
                return false;
            };
            let joined = link.parent().unwrap_or(Path::new("/")).join(&target);
            match (joined.parent(), joined.file_name()) {
                (Some(dir), Some(_)) => {
                    std::fs::canonicalize(dir).is_ok_and(|d| d.starts_with(&root))
                }
                _ => false,
            }
        }
    }
}

/// Writes a file's data to a new file at `dest`, leaving holes where the data is zeros (a
/// sparse file in the sandbox stays sparse here). Returns the bytes written.
fn write_sparse(src: &mut dyn Read, dest: &Path, mode: u32, size: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc_o_nofollow())
        .mode(mode)
        .open(dest)?;
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            file.seek(std::io::SeekFrom::Current(n as i64))?;
        } else {
            file.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    // A trailing hole still counts in the length.
    file.set_len(size.max(done))?;
    Ok(done)
}

/// `O_NOFOLLOW` (Linux), so that the final component is never a link even in a race.
const fn libc_o_nofollow() -> i32 {
    0o400000
}

/// Extracts a Docker archive whose top-level entry is `src_name` to `target`, safely:
/// - entries with `..` or absolute paths are refused;
/// - directories below `target` are checked component by component; links and files in
///   their way are replaced, never followed;
/// - a file is written as a new file (an existing one is unlinked first, never written
///   through), without setuid/setgid bits, sparse where the data is zeros;
/// - links are made last, and kept only when they resolve inside `target`;
/// - hard links only to files of this copy; devices, pipes and sockets are refused;
/// - more than `limit` bytes of file data stops the copy (what was written stays).
pub fn unpack(
    tar: &mut dyn Read,
    src_name: &str,
    target: &Path,
    limit: u64,
) -> Result<CopyReport, SandboxError> {
    let err = |e: std::io::Error| SandboxError::io(format!("writing {}", target.display()), e);
    let mut report = CopyReport::default();
    let mut archive = tar::Archive::new(tar);
    let mut links: Vec<(PathBuf, PathBuf, String)> = Vec::new();
    let mut files: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        let shown = path.display().to_string();
        let rel = path.strip_prefix(src_name).unwrap_or(&path).to_owned();
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            report
                .refused
                .push(format!("{shown}: a path that leaves the copy"));
            continue;
        }
        let rel: PathBuf = rel.components().collect();
        let dest = if rel.as_os_str().is_empty() {
            target.to_owned()
        } else {
            target.join(&rel)
        };
        let parent_rel = rel.parent().map(Path::to_owned).unwrap_or_default();
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if rel.as_os_str().is_empty() {
                    match std::fs::symlink_metadata(target) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            std::fs::remove_file(target).map_err(err)?;
                            std::fs::create_dir(target).map_err(err)?;
                        }
                        Err(_) => std::fs::create_dir(target).map_err(err)?,
                    }
                } else {
                    make_dirs(target, &rel).map_err(err)?;
                }
                report.directories += 1;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if report.bytes + size > limit {
                    return Err(SandboxError::TooLarge {
                        path: shown,
                        size: report.bytes + size,
                        limit,
                    });
                }
                make_dirs(target, &parent_rel).map_err(err)?;
                match std::fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {
                        report
                            .refused
                            .push(format!("{shown}: a directory is in its place here"));
                        continue;
                    }
                    Ok(_) => std::fs::remove_file(&dest).map_err(err)?,
                    Err(_) => {}
                }
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                let written = write_sparse(&mut entry, &dest, mode, size).map_err(err)?;
                report.bytes += written.max(size);
                report.files += 1;
                files.insert(rel.clone());
            }
            tar::EntryType::Symlink => {
                let to = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                links.push((rel.clone(), to, shown));
            }
            tar::EntryType::Link => {
                let to = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let to_rel: PathBuf = to
                    .strip_prefix(src_name)
                    .unwrap_or(&to)
                    .components()
                    .collect();
                if !files.contains(&to_rel) {
                    report
                        .refused
                        .push(format!("{shown}: a hard link to a file outside the copy"));
                    continue;
                }
                make_dirs(target, &parent_rel).map_err(err)?;
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    std::fs::remove_file(&dest).map_err(err)?;
                }
                std::fs::hard_link(target.join(&to_rel), &dest).map_err(err)?;
                report.files += 1;
            }
            other => report
                .refused
                .push(format!("{shown}: special files ({other:?}) are not copied")),
        }
    }
    // Links last, so that no entry of the archive is written through one.
    for (rel, to, shown) in links {
        if to.is_absolute() {
            report.refused.push(format!(
                "{shown}: a link to {} (links must stay inside the copy)",
                to.display()
            ));
            continue;
        }
        let dest = target.join(&rel);
        let parent_rel = rel.parent().map(Path::to_owned).unwrap_or_default();
        make_dirs(target, &parent_rel).map_err(err)?;
        match std::fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {
                report
                    .refused
                    .push(format!("{shown}: a directory is in its place here"));
                continue;
            }
            Ok(_) => std::fs::remove_file(&dest).map_err(err)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&to, &dest).map_err(err)?;
        if link_stays_inside(target, &dest) {
            report.links += 1;
        } else {
            std::fs::remove_file(&dest).map_err(err)?;
            report.refused.push(format!(
                "{shown}: a link to {} (links must stay inside the copy)",
                to.display()
            ));
        }
    }
    Ok(report)
}

/// A tar of `local` whose top-level entry is called `name`. Links are packed as links,
/// never followed: what a link on this machine points to is not sent into a sandbox.
fn pack(local: &Path, name: &str) -> Result<(Vec<u8>, u64), SandboxError> {
    let err = |e: std::io::Error| SandboxError::io(format!("reading {}", local.display()), e);
    let meta = std::fs::symlink_metadata(local).map_err(err)?;
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
                let meta = entry.path().symlink_metadata().map_err(err)?;
                stack.push((entry.path(), rel.join(entry.file_name()), meta));
            }
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            let mut h = header(tar::EntryType::Regular, meta.len(), mode);
            let file = std::fs::File::open(&path).map_err(err)?;
            builder.append_data(&mut h, &rel, file).map_err(err)?;
            bytes += meta.len();
        } else if meta.file_type().is_symlink() {
            let to = std::fs::read_link(&path).map_err(err)?;
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            builder.append_link(&mut h, &rel, &to).map_err(err)?;
        }
    }
    Ok((builder.into_inner().map_err(err)?, bytes))
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
        std::os::unix::fs::symlink("sub/b.txt", src.join("link")).unwrap();
        let (tar, bytes) = pack(&src, "tree").unwrap();
        assert_eq!(bytes, 4 + "héllo".len() as u64);
        let out = dir.path().join("copy");
        let report = unpack(&mut tar.as_slice(), "tree", &out, u64::MAX).unwrap();
        assert_eq!((report.bytes, report.files, report.links), (bytes, 2, 1));
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        assert_eq!(
            std::fs::read(out.join("a.bin")).unwrap(),
            vec![0, 1, 2, 255]
        );
        assert_eq!(
            std::fs::read_to_string(out.join("sub/b.txt")).unwrap(),
            "héllo"
        );
        assert_eq!(std::fs::read_to_string(out.join("link")).unwrap(), "héllo");
    }

    /// An archive of entries as a hostile sandbox could send them.
    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o4755);
            // Paths with `..` cannot go through set_path: write the name bytes directly.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn extraction_never_leaves_its_destination() {
        use tar::EntryType::{Block, Char, Directory, Fifo, Link, Regular, Symlink};
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host data").unwrap();
        let out = dir.path().join("copy");
        let outside_str = outside.to_str().unwrap().to_owned();

        // One copy with every trick at once.
        let tar = archive(&[
            ("d/", Directory, b"", None),
            ("d/abs", Symlink, b"", Some(&outside_str)),
            ("d/up", Symlink, b"", Some("../../outside/secret")),
            ("d/x/", Directory, b"", None),
            // Inside on its own, but a step of the next one...
            ("d/x/b", Symlink, b"", Some("..")),
            // ...which leads out through it: d/x/b -> d, so d/x/b/../../y is outside.
            ("d/chain", Symlink, b"", Some("x/b/../../outside/secret")),
            ("d/ok", Symlink, b"", Some("x")),
            ("d/../escape", Regular, b"evil", None),
            ("d/hard", Link, b"", Some("/etc/passwd")),
            ("d/dev", Char, b"", None),
            ("d/blk", Block, b"", None),
            ("d/fifo", Fifo, b"", None),
            ("d/setuid", Regular, b"#!/bin/sh", None),
        ]);
        let report = unpack(&mut tar.as_slice(), "d", &out, u64::MAX).unwrap();
        let refused = report.refused.join("\n");
        for name in ["abs", "up", "chain", "escape", "hard", "dev", "blk", "fifo"] {
            assert!(refused.contains(name), "{name} not refused: {refused}");
        }
        for name in ["abs", "up", "chain", "hard", "dev", "blk", "fifo"] {
            assert!(
                std::fs::symlink_metadata(out.join(name)).is_err(),
                "{name} was made"
            );
        }
        assert!(!dir.path().join("escape").exists());
        assert_eq!(std::fs::read_link(out.join("ok")).unwrap(), Path::new("x"));
        assert_eq!(
            std::fs::read_link(out.join("x/b")).unwrap(),
            Path::new("..")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("setuid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid bits kept: {mode:o}");

        // A later copy where the agent turned a name that is a link here into a directory
        // with a file in it: the file lands inside the copy, never at the link's target.
        std::os::unix::fs::symlink(&outside, out.join("was_link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), out.join("file_link")).unwrap();
        let tar = archive(&[
            ("d/", Directory, b"", None),
            ("d/was_link/", Directory, b"", None),
            ("d/was_link/secret", Regular, b"agent data", None),
            ("d/file_link", Regular, b"agent data", None),
        ]);
        unpack(&mut tar.as_slice(), "d", &out, u64::MAX).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "host data"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("was_link/secret")).unwrap(),
            "agent data"
        );
        assert!(
            std::fs::symlink_metadata(out.join("file_link"))
                .unwrap()
                .is_file()
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }

    #[test]
    fn sparse_files_stay_sparse_and_limits_hold() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // 64 MiB of zeros with a byte at the end, as Docker sends a sparse file: in full.
        let mut data = vec![0u8; 64 << 20];
        *data.last_mut().unwrap() = 7;
        let tar = archive(&[("big", tar::EntryType::Regular, &data, None)]);
        let out = dir.path().join("big");
        let report = unpack(&mut tar.as_slice(), "big", &out, u64::MAX).unwrap();
        assert_eq!(report.bytes, 64 << 20);
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} bytes on disk for a sparse file",
            meta.blocks() * 512
        );
        let err = unpack(&mut tar.as_slice(), "big", &dir.path().join("b2"), 1 << 20)
            .expect_err("over the limit")
            .to_string();
        assert!(err.contains("limit"), "{err}");
    }
}
