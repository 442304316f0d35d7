//! The desktop image: its build context (sandbox/, embedded in the binary so an installed
//! `selfagent` builds it anywhere) and the build itself, with progress.

use super::provider::{BuildItem, BuildRequest};
use super::{Engine, SandboxError};
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
    // The office flavour (Dockerfile.office, on top of the default image).
    (
        "Dockerfile.office",
        include_bytes!("../../sandbox/Dockerfile.office"),
        0o644,
    ),
    (
        "office/rootfs/etc/asound.conf",
        include_bytes!("../../sandbox/office/rootfs/etc/asound.conf"),
        0o644,
    ),
    (
        "office/rootfs/usr/local/bin/google-chrome",
        include_bytes!("../../sandbox/office/rootfs/usr/local/bin/google-chrome"),
        0o755,
    ),
    (
        "office/rootfs/usr/local/bin/gnome-terminal",
        include_bytes!("../../sandbox/office/rootfs/usr/local/bin/gnome-terminal"),
        0o755,
    ),
    (
        "office/rootfs/usr/local/bin/selfagent-chrome",
        include_bytes!("../../sandbox/office/rootfs/usr/local/bin/selfagent-chrome"),
        0o755,
    ),
    (
        "office/rootfs/usr/local/bin/code",
        include_bytes!("../../sandbox/office/rootfs/usr/local/bin/code"),
        0o755,
    ),
    (
        "office/rootfs/home/user/.config/libreoffice/4/user/registrymodifications.xcu",
        include_bytes!(
            "../../sandbox/office/rootfs/home/user/.config/libreoffice/4/user/registrymodifications.xcu"
        ),
        0o644,
    ),
    (
        "office/rootfs/home/user/.config/vlc/vlcrc",
        include_bytes!("../../sandbox/office/rootfs/home/user/.config/vlc/vlcrc"),
        0o644,
    ),
    (
        "office/rootfs/opt/selfagent/osworld/requirements.txt",
        include_bytes!("../../sandbox/office/rootfs/opt/selfagent/osworld/requirements.txt"),
        0o644,
    ),
    (
        "office/rootfs/opt/selfagent/osworld/evaluate.py",
        include_bytes!("../../sandbox/office/rootfs/opt/selfagent/osworld/evaluate.py"),
        0o644,
    ),
    (
        "office/rootfs/opt/selfagent/osworld/a11y.py",
        include_bytes!("../../sandbox/office/rootfs/opt/selfagent/osworld/a11y.py"),
        0o644,
    ),
    (
        "office/rootfs/opt/selfagent/osworld/stubs/easyocr.py",
        include_bytes!("../../sandbox/office/rootfs/opt/selfagent/osworld/stubs/easyocr.py"),
        0o644,
    ),
];

/// The embedded bootstrap script, for `selfagent sandbox base`.
pub fn bootstrap_script() -> &'static [u8] {
    include_bytes!("../../sandbox/bootstrap-base.sh")
}

/// The office desktop's tag (`sandbox build --flavor office`).
pub const OFFICE_IMAGE: &str = "selfagent-desktop:office";

/// Which desktop image a build makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Flavor {
    /// The desktop: XFCE, Firefox, a terminal, an editor, a file manager.
    #[default]
    Default,
    /// The desktop plus LibreOffice, GIMP, VLC, Thunderbird, Chromium and OSWorld's
    /// evaluators (built on top of the default image, which is built first if missing).
    Office,
}

impl Flavor {
    pub fn dockerfile(self) -> &'static str {
        match self {
            Flavor::Default => "Dockerfile",
            Flavor::Office => "Dockerfile.office",
        }
    }

    pub fn default_tag(self) -> &'static str {
        match self {
            Flavor::Default => super::DEFAULT_IMAGE,
            Flavor::Office => OFFICE_IMAGE,
        }
    }

    /// Whether a context file goes into this flavour's image.
    fn uses(self, path: &str) -> bool {
        let office = path == "Dockerfile.office" || path.starts_with("office/");
        self == Flavor::Office || !office
    }
}

/// A short hash of the embedded context: images built from another context are stale.
pub fn context_hash() -> String {
    context_hash_of(Flavor::Default)
}

/// The context hash of one flavour's files (the office image's include the default's).
pub fn context_hash_of(flavor: Flavor) -> String {
    let mut h = Sha256::new();
    for (path, data, mode) in CONTEXT.iter().filter(|(p, _, _)| flavor.uses(p)) {
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

/// The context as a tar archive, as `docker build` sends it, with `ca/` holding extra
/// certificates to trust (a TLS-inspecting proxy's), `(file name, PEM)`.
pub fn context_tar(ca_certs: &[(String, Vec<u8>)]) -> Result<Vec<u8>, SandboxError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    builder
        .append_data(&mut dir, "ca/", std::io::empty())
        .map_err(|e| SandboxError::io("packing the build context", e))?;
    let certs = ca_certs
        .iter()
        .map(|(name, pem)| (format!("ca/{name}"), pem.as_slice(), 0o644));
    let embedded = CONTEXT.iter().map(|(p, d, m)| ((*p).to_owned(), *d, *m));
    for (path, data, mode) in embedded.chain(certs) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(0);
        builder
            .append_data(&mut h, &path, data)
            .map_err(|e| SandboxError::io("packing the build context", e))?;
    }
    builder
        .into_inner()
        .map_err(|e| SandboxError::io("packing the build context", e))
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub tag: String,
    pub flavor: Flavor,
    pub build_args: Vec<(String, String)>,
    pub no_cache: bool,
    /// Extra certificates to trust while building (and in the image): `(name, PEM)`.
    pub ca_certs: Vec<(String, Vec<u8>)>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            tag: super::DEFAULT_IMAGE.into(),
            flavor: Flavor::Default,
            build_args: Vec::new(),
            no_cache: false,
            ca_certs: Vec::new(),
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
    engine
        .image_store()?
        .pull(BASE_IMAGE)
        .await
        .map_err(|reason| SandboxError::BaseMissing {
            base: BASE_IMAGE.into(),
            reason,
        })
}

/// Builds the desktop image from the embedded context; returns the image id.
pub async fn build(
    engine: &Engine,
    opts: &BuildOptions,
    mut progress: impl FnMut(BuildEvent),
) -> Result<String, SandboxError> {
    ensure_base(engine).await?;
    let tar = context_tar(&opts.ca_certs)?;
    let mut args: HashMap<String, String> = opts.build_args.iter().cloned().collect();
    if opts.flavor == Flavor::Office {
        args.entry("BASE".into())
            .or_insert_with(|| super::DEFAULT_IMAGE.into());
    }
    let labels = HashMap::from([(LABEL_CONTEXT.to_owned(), context_hash_of(opts.flavor))]);
    let request = BuildRequest {
        tag: opts.tag.clone(),
        dockerfile: opts.flavor.dockerfile().to_owned(),
        args,
        labels,
        no_cache: opts.no_cache,
    };
    let mut stream = engine.image_store()?.build(tar, request);
    let mut image_id = None;
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let text = match item? {
            BuildItem::Error(message) => {
                let context = tail.join("\n");
                return Err(SandboxError::Build(format!("{message}\n{context}")));
            }
            // The first id reported is the image's.
            BuildItem::Id(id) => {
                if image_id.is_none() && !id.is_empty() {
                    image_id = Some(id);
                }
                continue;
            }
            BuildItem::Text(text) => text,
        };
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
    image_id.ok_or_else(|| SandboxError::Build("the engine reported no image id".into()))
}

/// The context hash an image was built from, if it carries one.
pub async fn image_context(engine: &Engine, image: &str) -> Result<Option<String>, SandboxError> {
    let info = engine
        .provider()
        .image(image)
        .await?
        .ok_or_else(|| SandboxError::ImageMissing {
            image: image.to_owned(),
        })?;
    Ok(info.labels.get(LABEL_CONTEXT).cloned())
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
        let tar = context_tar(&[("proxy.crt".into(), b"PEM".to_vec())]).unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        // The files, the ca/ folder (empty without certificates) and the certificate.
        assert_eq!(names.len(), CONTEXT.len() + 2);
        assert!(names.contains(&"ca/proxy.crt".to_owned()), "{names:?}");
        assert_eq!(context_hash().len(), 12);
        // Office files change the office image's hash only.
        assert_ne!(context_hash(), context_hash_of(Flavor::Office));
        assert!(!Flavor::Default.uses("office/rootfs/etc/asound.conf"));
        assert!(Flavor::Office.uses("Dockerfile"));
    }
}
