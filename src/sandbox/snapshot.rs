//! Final-state snapshots: a finished desktop's filesystem committed to an image
//! (`selfagent-final:<session>`), and short-lived inspector containers started from such an
//! image, so checks can run again long after the desktop is gone.
//!
//! A snapshot holds no credential: the desktop keeps them on tmpfs mounts (never committed),
//! and they never pass through the container's environment or config. Running processes and windows are
//! not part of a filesystem; the window list is recorded separately (see `task::check`).

use super::{
    Doing, Engine, LABEL_CREATED, LABEL_NAME, LABEL_NETWORK, LABEL_OWNER, LABEL_SESSION, LABEL_TTL,
    Network, Sandbox, SandboxError, Secrets, now_secs,
};
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
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
        let info = self
            .engine
            .docker()
            .inspect_container(
                self.id(),
                Some(
                    bollard::query_parameters::InspectContainerOptionsBuilder::default()
                        .size(true)
                        .build(),
                ),
            )
            .await
            .doing(|| format!("measuring the changes of sandbox {}", self.short_id()))?;
        Ok(info.size_rw.unwrap_or(0).max(0) as u64)
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
        let options = CommitContainerOptionsBuilder::default()
            .container(self.id())
            .repo(repo)
            .tag(tag)
            .comment(&format!("final state of selfagent session {session}"))
            .pause(true)
            .build();
        let config = ContainerConfig {
            labels: Some(labels),
            ..Default::default()
        };
        self.engine
            .docker()
            .commit_container(options, config)
            .await
            .doing(|| format!("committing sandbox {} to {image}", self.short_id()))?;
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
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["sleep".into(), INSPECTOR_TTL.to_string()]),
            cmd: Some(Vec::new()),
            labels: Some(labels),
            hostname: Some("desktop".into()),
            host_config: Some(HostConfig {
                memory: Some(512 << 20),
                memory_swap: Some(512 << 20),
                nano_cpus: Some(1_000_000_000),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                init: Some(true),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker()
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .doing(|| format!("creating an inspector from {image}"))?;
        let id = created.id;
        if let Err(e) = self.docker().start_container(&id, None).await {
            let _ = self.remove(&id).await;
            return Err(SandboxError::Docker {
                doing: format!("starting an inspector from {image}"),
                error: e,
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
            },
            published: None,
            tunnel: Arc::new(OnceCell::new()),
        })
    }

    /// Every snapshot image, newest first.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotInfo>, SandboxError> {
        // All images in one call: the snapshots, and their parents for their own sizes.
        let images = self
            .docker()
            .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
            .await
            .doing(|| "listing snapshot images".into())?;
        let sizes: HashMap<&str, i64> = images.iter().map(|i| (i.id.as_str(), i.size)).collect();
        let mut out: Vec<SnapshotInfo> = images
            .iter()
            .filter(|i| i.labels.contains_key(LABEL_SNAPSHOT))
            .flat_map(|i| {
                let label = |k: &str| i.labels.get(k).cloned().unwrap_or_default();
                let (session, task) = (label(LABEL_SNAPSHOT), label(LABEL_TASK));
                let parent = sizes.get(i.parent_id.as_str()).copied().unwrap_or(0);
                let (created, size) = (i.created, (i.size - parent).max(0));
                i.repo_tags
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
        match self
            .docker()
            .remove_image(
                image,
                Some(RemoveImageOptionsBuilder::default().build()),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if super::is_not_found(&e) => Ok(()),
            Err(e) => Err(SandboxError::Docker {
                doing: format!("removing snapshot {image}"),
                error: e,
            }),
        }
    }
}
