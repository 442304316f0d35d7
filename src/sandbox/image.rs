//! The desktop image: its build context (sandbox/, embedded in the binary so an installed
//! `selfagent` builds it anywhere) and the build itself, with progress.

use super::{Doing, Engine, SandboxError};
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The image the Dockerfile starts from.
pub const BASE_IMAGE: &str = "debian:bookworm-slim";
/// Label on built images: the hash of the context they were built from.
pub const LABEL_CONTEXT: &str = "selfagent.context";

/// `(path in the context, contents, mode)`; `context_matches_sandbox_dir` checks it lists
/// every file of sandbox/.
pub const CONTEXT: &[(&str, &[u8], u32)] = &[
    (
        "Dockerfile",
        include_bytes!("../../sandbox/Dockerfile"),
        0o644,
    ),
    (
        "bootstrap-base.sh",
        include_bytes!("../../sandbox/bootstrap-base.sh"),
        0o755,
    ),
    // A host-side helper (a second engine to try several engines with), kept with the other
    // scripts; in the build context but not in the image.
    (
        "second-engine.sh",
        include_bytes!("../../sandbox/second-engine.sh"),
        0o755,
    ),
    (
        "rootfs/usr/local/bin/selfagent-desktop",
        include_bytes!("../../sandbox/rootfs/usr/local/bin/selfagent-desktop"),
        0o755,
    ),
    (
        "rootfs/usr/local/bin/selfagent-launch",
        include_bytes!("../../sandbox/rootfs/usr/local/bin/selfagent-launch"),
        0o755,
    ),
    (
        "rootfs/usr/local/bin/selfagent-stream",
        include_bytes!("../../sandbox/rootfs/usr/local/bin/selfagent-stream"),
        0o755,
    ),
    (
        "rootfs/opt/selfagent/view.py",
        include_bytes!("../../sandbox/rootfs/opt/selfagent/view.py"),
        0o644,
    ),
    (
        "rootfs/opt/selfagent/xfconf/xfwm4.xml",
        include_bytes!("../../sandbox/rootfs/opt/selfagent/xfconf/xfwm4.xml"),
        0o644,
    ),
    (
        "rootfs/opt/selfagent/xfconf/xfce4-desktop.xml",
        include_bytes!("../../sandbox/rootfs/opt/selfagent/xfconf/xfce4-desktop.xml"),
        0o644,
    ),
    (
        "rootfs/opt/selfagent/xfconf/xfce4-session.xml",
        include_bytes!("../../sandbox/rootfs/opt/selfagent/xfconf/xfce4-session.xml"),
        0o644,
    ),
    (
        "rootfs/usr/lib/firefox-esr/distribution/policies.json",
        include_bytes!("../../sandbox/rootfs/usr/lib/firefox-esr/distribution/policies.json"),
        0o644,
    ),
];

/// The embedded bootstrap script, for `selfagent sandbox base`.
pub fn bootstrap_script() -> &'static [u8] {
    include_bytes!("../../sandbox/bootstrap-base.sh")
}

/// A short hash of the embedded context: images built from another context are stale.
pub fn context_hash() -> String {
    let mut h = Sha256::new();
    for (path, data, mode) in CONTEXT {
        h.update(path.as_bytes());
        h.update(mode.to_le_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The context as a tar archive, as `docker build` sends it.
pub fn context_tar() -> Result<Vec<u8>, SandboxError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in CONTEXT {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(0);
        builder
            .append_data(&mut h, path, *data)
            .map_err(|e| SandboxError::io("packing the build context", e))?;
    }
    builder
        .into_inner()
        .map_err(|e| SandboxError::io("packing the build context", e))
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub tag: String,
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            tag: super::DEFAULT_IMAGE.into(),
            build_args: Vec::new(),
            no_cache: false,
        }
    }
}

/// What a build reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// `Step 3/9 : RUN apt-get ...`
    Step {
        index: u32,
        total: u32,
        text: String,
    },
    /// A line of output from the current step.
    Output(String),
}

fn parse_step(line: &str) -> Option<(u32, u32, String)> {
    let rest = line.strip_prefix("Step ")?;
    let (counts, text) = rest.split_once(" : ")?;
    let (index, total) = counts.split_once('/')?;
    Some((
        index.parse().ok()?,
        total.parse().ok()?,
        text.trim().to_owned(),
    ))
}

/// Makes sure the base image is there, pulling it when a registry is reachable.
pub async fn ensure_base(engine: &Engine) -> Result<(), SandboxError> {
    if engine.image_exists(BASE_IMAGE).await? {
        return Ok(());
    }
    let (name, tag) = BASE_IMAGE.split_once(':').unwrap_or((BASE_IMAGE, "latest"));
    let mut pull = engine.docker().create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_image(name)
                .tag(tag)
                .build(),
        ),
        None,
        None,
    );
    while let Some(item) = pull.next().await {
        if let Err(e) = item {
            return Err(SandboxError::BaseMissing {
                base: BASE_IMAGE.into(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Builds the desktop image from the embedded context; returns the image id.
pub async fn build(
    engine: &Engine,
    opts: &BuildOptions,
    mut progress: impl FnMut(BuildEvent),
) -> Result<String, SandboxError> {
    ensure_base(engine).await?;
    let tar = context_tar()?;
    let args: HashMap<String, String> = opts.build_args.iter().cloned().collect();
    let labels = HashMap::from([(LABEL_CONTEXT.to_owned(), context_hash())]);
    let options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&opts.tag)
        .rm(true)
        .forcerm(true)
        .nocache(opts.no_cache)
        .buildargs(&args)
        .labels(&labels)
        .build();
    let mut stream =
        engine
            .docker()
            .build_image(options, None, Some(bollard::body_full(tar.into())));
    let mut image_id = None;
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item.doing(|| format!("building {}", opts.tag))?;
        if let Some(detail) = info.error_detail {
            let message = detail.message.unwrap_or_else(|| "unknown error".into());
            let context = tail.join("\n");
            return Err(SandboxError::Build(format!("{message}\n{context}")));
        }
        if let Some(aux) = info.aux
            && let Some(id) = aux.id
        {
            image_id = Some(id);
        }
        let text = info.stream.or(info.status).unwrap_or_default();
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if let Some((index, total, text)) = parse_step(line) {
                progress(BuildEvent::Step { index, total, text });
            } else {
                tail.push(line.to_owned());
                if tail.len() > 20 {
                    tail.remove(0);
                }
                progress(BuildEvent::Output(line.to_owned()));
            }
        }
    }
    match image_id {
        Some(id) => Ok(id),
        None => engine
            .docker()
            .inspect_image(&opts.tag)
            .await
            .doing(|| format!("inspecting the new image {}", opts.tag))?
            .id
            .ok_or_else(|| SandboxError::Build("the engine reported no image id".into())),
    }
}

/// The context hash an image was built from, if it carries one.
pub async fn image_context(engine: &Engine, image: &str) -> Result<Option<String>, SandboxError> {
    let info = engine
        .docker()
        .inspect_image(image)
        .await
        .doing(|| format!("inspecting image {image}"))?;
    Ok(info
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(LABEL_CONTEXT).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use std::path::Path;

    fn files_under(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(&path, base, out);
            } else {
                out.push(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }

    #[test]
    fn context_matches_sandbox_dir() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox");
        let mut on_disk = Vec::new();
        files_under(&base, &base, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = CONTEXT.iter().map(|(p, _, _)| (*p).to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add new sandbox/ files to CONTEXT");
        for (path, _, mode) in CONTEXT {
            use std::os::unix::fs::PermissionsExt;
            let disk_mode = std::fs::metadata(base.join(path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                disk_mode & 0o111 != 0,
                mode & 0o111 != 0,
                "{path}: executable bit"
            );
        }
    }

    #[test]
    fn steps_are_parsed() {
        assert_eq!(
            parse_step("Step 3/9 : RUN apt-get update"),
            Some((3, 9, "RUN apt-get update".into()))
        );
        assert_eq!(parse_step(" ---> Running in abc"), None);
    }

    #[test]
    fn context_tar_holds_every_file() {
        let tar = context_tar().unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), CONTEXT.len());
        assert_eq!(context_hash().len(), 12);
    }
}
