//! Final-state snapshots: a finished desktop's filesystem committed to an image
//! (`selfagent-final:<session>`), and short-lived inspector containers started from such an
//! image, so checks can run again long after the desktop is gone.
//!
//! A snapshot holds no credential: the desktop keeps them on tmpfs mounts (never committed),
//! and they never pass through the container's environment or config. Running processes and windows are
//! not part of a filesystem; the window list is recorded separately (see `task::check`).

use super::provider::{ContainerPlan, ImageInfo, Removed};
use super::{
    Engine, LABEL_CREATED, LABEL_NAME, LABEL_NETWORK, LABEL_OWNER, LABEL_SESSION, LABEL_TTL,
    Network, Sandbox, SandboxError, Secrets, now_secs,
};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// The repository snapshot images are tagged in.
pub const SNAPSHOT_REPO: &str = "selfagent-final";
/// On snapshot images: the session they come from.
pub const LABEL_SNAPSHOT: &str = "selfagent.snapshot";
/// On snapshot images: the task id of that session.
pub const LABEL_TASK: &str = "selfagent.task";

/// Seconds an inspector container lives at most (it is removed as soon as the checks ran).
const INSPECTOR_TTL: u64 = 600;

/// The image name of a session's snapshot.
pub fn snapshot_image(session: &str) -> String {
    format!("{SNAPSHOT_REPO}:{}", session.to_ascii_lowercase())
}

/// One snapshot image, for listing and pruning.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub image: String,
    pub session: String,
    pub task: String,
    pub created: i64,
    /// Bytes this snapshot adds on top of the desktop image.
    pub size: i64,
}

impl Sandbox {
    /// Bytes the desktop's filesystem has changed (its writable layer, apparent sizes: a
    /// sparse file counts in full, as a commit would store it).
    pub async fn changed_bytes(&self) -> Result<u64, SandboxError> {
        self.engine.snapshot_store()?.changed_bytes(self.id()).await
    }

    /// Commits the container's filesystem to [`snapshot_image`]`(session)` and returns the
    /// image name. The container keeps running (it is paused for the commit).
    pub async fn commit_snapshot(
        &self,
        session: &str,
        task: Option<&str>,
    ) -> Result<String, SandboxError> {
        let image = snapshot_image(session);
        let (repo, tag) = image.split_once(':').unwrap_or((SNAPSHOT_REPO, "latest"));
        // Docker merges the container's settings into the image's: naming every selfagent
        // label keeps the container's out. (No credential is in its environment or files:
        // they live on tmpfs mounts, which a commit does not include.)
        let labels = HashMap::from([
            (LABEL_SNAPSHOT.to_owned(), session.to_owned()),
            (LABEL_TASK.to_owned(), task.unwrap_or_default().to_owned()),
            (LABEL_CREATED.to_owned(), String::new()),
            (LABEL_TTL.to_owned(), String::new()),
            (LABEL_SESSION.to_owned(), session.to_owned()),
            (LABEL_OWNER.to_owned(), String::new()),
            (LABEL_NAME.to_owned(), String::new()),
            (LABEL_NETWORK.to_owned(), String::new()),
        ]);
        self.engine
            .snapshot_store()?
            .commit(
                self.id(),
                (repo, tag),
                labels,
                &format!("final state of selfagent session {session}"),
                false,
            )
            .await?;
        Ok(image)
    }
}

impl Engine {
    /// Starts an inspector: a container from a snapshot image that only sleeps, with no
    /// network, no capabilities and small limits, for running checks in. Remove it with
    /// [`Sandbox::kill`] (it also stops itself, and `prune` removes it, when left behind).
    pub async fn inspect_snapshot(&self, image: &str) -> Result<Sandbox, SandboxError> {
        if !self.image_exists(image).await? {
            return Err(SandboxError::ImageMissing {
                image: image.to_owned(),
            });
        }
        let name = format!("inspect-{}", image.rsplit(':').next().unwrap_or("snapshot"));
        let labels = HashMap::from([
            (LABEL_CREATED.to_owned(), now_secs().to_string()),
            (LABEL_TTL.to_owned(), INSPECTOR_TTL.to_string()),
            (LABEL_OWNER.to_owned(), crate::process::owner_token()),
            (LABEL_NAME.to_owned(), name.clone()),
            (LABEL_NETWORK.to_owned(), "none".to_owned()),
        ]);
        let plan = ContainerPlan {
            image: image.to_owned(),
            entrypoint: Some(vec!["sleep".into(), INSPECTOR_TTL.to_string()]),
            labels,
            hostname: "desktop".into(),
            memory: 512 << 20,
            cpus: 1.0,
            pids: 256,
            network: Network::None,
            ..ContainerPlan::default()
        };
        let id = self.provider.create(&plan).await?;
        if let Err(e) = self.provider.start(&id).await {
            let _ = self.remove(&id).await;
            return Err(SandboxError::Provider {
                doing: format!("starting an inspector from {image}"),
                source: Box::new(e),
            });
        }
        Ok(Sandbox {
            engine: self.clone(),
            name,
            width: 0,
            height: 0,
            id,
            network: Network::None,
            secrets: Secrets {
                vnc_password: String::new(),
                x11_cookie: String::new(),
                view_token: String::new(),
                watch_token: String::new(),
                watch_password: String::new(),
            },
            published: None,
            tunnel: Arc::new(OnceCell::new()),
        })
    }

    /// Every snapshot image, newest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, SandboxError> {
        // All images in one call: the snapshots, and their parents for their own sizes.
        let images = self.all_images().await?;
        let sizes: HashMap<&str, i64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
        let mut out: Vec<SnapshotInfo> = images
            .iter()
            .filter(|i| i.labels.contains_key(LABEL_SNAPSHOT))
            .flat_map(|i| {
                let label = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
                let (session, task) = (label(LABEL_SNAPSHOT), label(LABEL_TASK));
                let parent = sizes.get(i.parent.as_str()).copied().unwrap_or(0);
                let (created, size) = (i.created, (i.size - parent).max(0));
                i.tags
                    .iter()
                    .filter(|t| t.starts_with(&format!("{SNAPSHOT_REPO}:")))
                    .map(|t| SnapshotInfo {
                        image: t.clone(),
                        session: session.clone(),
                        task: task.clone(),
                        created,
                        size,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(out)
    }

    /// Removes a snapshot image (gone already is fine).
    pub async fn remove_snapshot(&self, image: &str) -> Result<(), SandboxError> {
        match self.snapshot_store()?.remove_image(image, false).await? {
            Removed::Removed | Removed::Gone => Ok(()),
            Removed::InUse => Err(SandboxError::Invalid(format!(
                "snapshot {image} is in use by a container"
            ))),
        }
    }
}

/// The repository saved snapshots (`sandbox snapshot NAME TAG`) are tagged in.
pub const SAVED_REPO: &str = "selfagent-snap";
/// On saved snapshot images: their tag.
pub const LABEL_SAVED: &str = "selfagent.saved";
/// On saved snapshot images: the desktop they were taken from.
pub const LABEL_ORIGIN: &str = "selfagent.origin";

/// The image of a saved snapshot.
pub fn saved_image(tag: &str) -> String {
    format!("{SAVED_REPO}:{tag}")
}

/// Checks a snapshot tag: Docker's tag rules, lower case.
pub fn check_tag(tag: &str) -> Result<(), SandboxError> {
    let ok = !tag.is_empty()
        && tag.len() <= 100
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c))
        && !tag.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!(
            "snapshot tag '{tag}' may only use lower-case letters, digits, '_', '.' and '-'"
        )))
    }
}

/// One saved snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SavedSnapshot {
    pub tag: String,
    pub image: String,
    /// The desktop it was taken from.
    pub origin: String,
    pub created: i64,
    /// Bytes it adds on top of the desktop image it came from.
    pub size: i64,
}

impl Sandbox {
    /// Saves this desktop's state (its filesystem, and its home directory when that is a
    /// persistent volume) as the image [`saved_image`]`(tag)`, to start new desktops from
    /// ([`SandboxSpec::image`](super::SandboxSpec)). Running programs are not part of it;
    /// credentials never are (they live on tmpfs mounts). The desktop is paused meanwhile.
    pub async fn save_snapshot(&self, tag: &str) -> Result<String, SandboxError> {
        check_tag(tag)?;
        let image = saved_image(tag);
        let labels = HashMap::from([
            (LABEL_SAVED.to_owned(), tag.to_owned()),
            (LABEL_ORIGIN.to_owned(), self.name().to_owned()),
            (LABEL_CREATED.to_owned(), String::new()),
            (LABEL_TTL.to_owned(), String::new()),
            (LABEL_SESSION.to_owned(), String::new()),
            (LABEL_OWNER.to_owned(), String::new()),
            (LABEL_NAME.to_owned(), String::new()),
            (LABEL_NETWORK.to_owned(), String::new()),
            (super::LABEL_POOL.to_owned(), String::new()),
            (super::LABEL_PERSIST.to_owned(), String::new()),
            (super::LABEL_POOL_SPEC.to_owned(), String::new()),
            (super::LABEL_POOL_SIZE.to_owned(), String::new()),
        ]);
        let with_home = self
            .engine
            .provider
            .inspect(self.id())
            .await?
            .home_is_volume;
        self.engine
            .snapshot_store()?
            .commit(
                self.id(),
                (SAVED_REPO, tag),
                labels,
                &format!("selfagent desktop {} saved as {tag}", self.name()),
                with_home,
            )
            .await?;
        Ok(image)
    }
}

impl Engine {
    /// Every image in one call (snapshots are found by label, their sizes by their parents').
    async fn all_images(&self) -> Result<Vec<ImageInfo>, SandboxError> {
        self.snapshot_store()?.all_images().await
    }

    /// Every saved snapshot, newest first.
    pub async fn saved_snapshots(&self) -> Result<Vec<SavedSnapshot>, SandboxError> {
        let images = self.all_images().await?;
        let sizes: HashMap<&str, i64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
        let mut out: Vec<SavedSnapshot> = images
            .iter()
            .filter(|i| i.labels.get(LABEL_SAVED).is_some_and(|t| !t.is_empty()))
            .flat_map(|i| {
                let parent = sizes.get(i.parent.as_str()).copied().unwrap_or(0);
                i.tags
                    .iter()
                    .filter_map(|t| t.strip_prefix(&format!("{SAVED_REPO}:")))
                    .map(|tag| SavedSnapshot {
                        tag: tag.to_owned(),
                        image: saved_image(tag),
                        origin: i.labels.get(LABEL_ORIGIN).cloned().unwrap_or_default(),
                        created: i.created,
                        size: (i.size - parent).max(0),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(out)
    }

    /// The image to start a desktop from a saved snapshot with; an error naming the saved
    /// ones when there is no such snapshot.
    pub async fn saved_snapshot_image(&self, tag: &str) -> Result<String, SandboxError> {
        check_tag(tag)?;
        let image = saved_image(tag);
        if self.image_exists(&image).await? {
            return Ok(image);
        }
        let known: Vec<String> = self
            .saved_snapshots()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.tag)
            .collect();
        Err(SandboxError::Invalid(format!(
            "there is no snapshot '{tag}'{}",
            if known.is_empty() {
                " (`selfagent sandbox snapshot NAME TAG` saves one)".to_owned()
            } else {
                format!(" (saved: {})", known.join(", "))
            }
        )))
    }

    /// Removes the images of saved snapshots whose name was removed while desktops still ran
    /// from them, once no container uses them any more; returns their ids. (Docker keeps
    /// such an image, untagged, as long as a container needs its layers.)
    pub async fn prune_unnamed_saved(&self) -> Result<Vec<String>, SandboxError> {
        if self.provider.snapshots().is_none() {
            return Ok(Vec::new());
        }
        let images = self.all_images().await?;
        let mut removed = Vec::new();
        for image in images {
            let saved = image.labels.get(LABEL_SAVED).is_some_and(|t| !t.is_empty());
            let named = image.tags.iter().any(|t| t != "<none>:<none>");
            if !saved || named {
                continue;
            }
            // Not forced: an image a container still uses is refused, and kept.
            if self
                .snapshot_store()?
                .remove_image(&image.id, false)
                .await?
                == Removed::Removed
            {
                removed.push(image.id);
            }
        }
        Ok(removed)
    }

    /// Removes a saved snapshot (desktops started from it keep running: the name goes, their
    /// layers stay until they are removed too, and `prune` then removes the image).
    pub async fn remove_saved(&self, tag: &str) -> Result<(), SandboxError> {
        check_tag(tag)?;
        let image = saved_image(tag);
        if !self.image_exists(&image).await? {
            return Err(SandboxError::Invalid(format!(
                "there is no snapshot '{tag}'"
            )));
        }
        self.snapshot_store()?
            .remove_image(&image, true)
            .await
            .map(|_| ())
    }
}
