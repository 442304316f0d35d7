//! The Docker provider: the only code that speaks the Docker API (bollard).
//!
//! Every call's error says what was being done and keeps bollard's error as its source.
//! Docker's ways are kept here: a 404 on a container is [`SandboxError::NotFound`], a 409
//! during removal means it is already going, a 304 on start or stop means it was already
//! so, and a rename to a taken name is a lost claim, not an error.

use super::provider::{
    Attached, BuildItem, BuildRequest, ContainerPlan, ContainerState, ExecRequest, Fut, ImageInfo,
    Images, Listed, Output, Provider, Removed, Snapshots,
};
use super::{Network, SandboxError, short};
use bollard::container::LogOutput;
use bollard::errors::Error as ApiError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerConfig, ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CommitContainerOptionsBuilder, CreateContainerOptions,
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    InspectContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptions, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::time::Duration;

/// One connection to a Docker engine.
#[derive(Clone)]
pub struct Docker {
    client: bollard::Docker,
}

fn status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The error of a call, with what was being done.
fn failed(doing: impl Into<String>, e: ApiError) -> SandboxError {
    SandboxError::Provider {
        doing: doing.into(),
        source: Box::new(e),
    }
}

impl Docker {
    /// Connects to `url` (`unix://`, `tcp://`, `http://`) and negotiates the API version.
    pub async fn connect(url: &str) -> Result<Self, SandboxError> {
        let engine_err = |e: ApiError| SandboxError::Engine {
            host: url.to_owned(),
            source: Box::new(e),
        };
        let client = bollard::Docker::connect_with_host(url).map_err(engine_err)?;
        let client = client.negotiate_version().await.map_err(engine_err)?;
        client.ping().await.map_err(engine_err)?;
        Ok(Self { client })
    }
}

/// Container port `p` → host port, from Docker's `"5900/tcp" → [{HostPort}]` map.
fn host_ports(ports: Option<HashMap<String, Option<Vec<PortBinding>>>>) -> HashMap<u16, u16> {
    ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(private, bindings)| {
            let private: u16 = private.split('/').next()?.parse().ok()?;
            let host: u16 = bindings?.first()?.host_port.as_deref()?.parse().ok()?;
            Some((private, host))
        })
        .collect()
}

fn host_config(plan: &ContainerPlan) -> HostConfig {
    let bindings: Option<HashMap<String, Option<Vec<PortBinding>>>> =
        (plan.network == Network::Bridge && !plan.publish.is_empty()).then(|| {
            plan.publish
                .iter()
                .map(|p| {
                    (
                        format!("{p}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(String::new()),
                        }]),
                    )
                })
                .collect()
        });
    HostConfig {
        memory: Some(plan.memory),
        memory_swap: Some(plan.memory),
        nano_cpus: Some((plan.cpus * 1e9) as i64),
        pids_limit: Some(plan.pids),
        shm_size: plan.shm,
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!plan.keep_caps.is_empty()).then(|| plan.keep_caps.clone()),
        security_opt: (!plan.allow_setuid).then(|| vec!["no-new-privileges:true".into()]),
        sysctls: (!plan.sysctls.is_empty()).then(|| plan.sysctls.clone()),
        init: Some(true),
        tmpfs: (!plan.tmpfs.is_empty()).then(|| plan.tmpfs.iter().cloned().collect()),
        port_bindings: bindings,
        network_mode: Some(
            match plan.network {
                Network::Bridge => "bridge",
                Network::None => "none",
            }
            .into(),
        ),
        mounts: (!plan.volumes.is_empty()).then(|| {
            plan.volumes
                .iter()
                .map(|(volume, target)| Mount {
                    target: Some(target.clone()),
                    source: Some(volume.clone()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                })
                .collect()
        }),
        restart_policy: plan.restart.then_some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        ..Default::default()
    }
}

impl Provider for Docker {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn ping(&self) -> Fut<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            self.client
                .ping()
                .await
                .map(|_| ())
                .map_err(|e| failed("asking the engine", e))
        })
    }

    fn version(&self) -> Fut<'_, Option<String>> {
        Box::pin(async move { self.client.version().await.ok().and_then(|v| v.version) })
    }

    fn image<'a>(&'a self, image: &'a str) -> Fut<'a, Result<Option<ImageInfo>, SandboxError>> {
        Box::pin(async move {
            match self.client.inspect_image(image).await {
                Ok(info) => Ok(Some(ImageInfo {
                    id: info.id.unwrap_or_default(),
                    parent: String::new(),
                    size: info.size.unwrap_or(0),
                    created: 0,
                    created_at: info.created,
                    tags: info.repo_tags.unwrap_or_default(),
                    labels: info.config.and_then(|c| c.labels).unwrap_or_default(),
                })),
                Err(e) if status(&e) == Some(404) => Ok(None),
                Err(e) => Err(failed(format!("inspecting image {image}"), e)),
            }
        })
    }

    fn create<'a>(&'a self, plan: &'a ContainerPlan) -> Fut<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            let exposed = (plan.network == Network::Bridge && !plan.publish.is_empty())
                .then(|| plan.publish.iter().map(|p| format!("{p}/tcp")).collect());
            let body = ContainerCreateBody {
                image: Some(plan.image.clone()),
                env: Some(plan.env.clone()),
                labels: Some(plan.labels.clone()),
                entrypoint: plan.entrypoint.clone(),
                // An entrypoint given replaces the image's command too.
                cmd: plan.entrypoint.as_ref().map(|_| Vec::new()),
                exposed_ports: exposed,
                host_config: Some(host_config(plan)),
                hostname: Some(plan.hostname.clone()),
                ..Default::default()
            };
            let options = plan
                .name
                .as_ref()
                .map(|n| CreateContainerOptionsBuilder::default().name(n).build());
            self.client
                .create_container(options, body)
                .await
                .map(|c| c.id)
                .map_err(|e| failed(format!("creating a container from image {}", plan.image), e))
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            match self.client.start_container(id, None).await {
                Ok(()) => Ok(()),
                Err(e) if status(&e) == Some(304) => Ok(()),
                Err(e) if status(&e) == Some(404) => Err(SandboxError::NotFound(id.to_owned())),
                Err(e) => Err(failed(format!("starting container {}", short(id)), e)),
            }
        })
    }

    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            let options = StopContainerOptionsBuilder::default()
                .t(grace.as_secs() as i32)
                .build();
            match self.client.stop_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                // Stopped already.
                Err(e) if status(&e) == Some(304) => Ok(()),
                Err(e) => Err(failed(format!("stopping sandbox {}", short(id)), e)),
            }
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            match self.client.remove_container(id, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if status(&e) == Some(404) => Ok(()),
                // Removal already under way (another `down`/`prune`): the container is going.
                Err(e) if status(&e) == Some(409) => Ok(()),
                Err(e) => Err(failed(format!("removing sandbox {}", short(id)), e)),
            }
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> Fut<'a, Result<ContainerState, SandboxError>> {
        Box::pin(async move {
            let info = match self.client.inspect_container(id, None).await {
                Ok(info) => info,
                Err(e) if status(&e) == Some(404) => {
                    return Err(SandboxError::NotFound(id.to_owned()));
                }
                Err(e) => return Err(failed(format!("inspecting sandbox {id}"), e)),
            };
            let state = info.state.unwrap_or_default();
            let config = info.config.unwrap_or_default();
            Ok(ContainerState {
                id: info.id.unwrap_or_else(|| id.to_owned()),
                status: state
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                exit_code: state.exit_code,
                oom_killed: state.oom_killed == Some(true),
                labels: config.labels.unwrap_or_default(),
                env: config
                    .env
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    })
                    .collect(),
                ports: host_ports(info.network_settings.and_then(|n| n.ports)),
                home_is_volume: info.mounts.unwrap_or_default().iter().any(|m| {
                    m.destination.as_deref() == Some("/home/user")
                        && m.typ.as_ref().map(ToString::to_string).as_deref() == Some("volume")
                }),
            })
        })
    }

    fn list<'a>(&'a self, labels: &'a [&'a str]) -> Fut<'a, Result<Vec<Listed>, SandboxError>> {
        Box::pin(async move {
            let filters = HashMap::from([("label", labels.to_vec())]);
            let options = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let all = self
                .client
                .list_containers(Some(options))
                .await
                .map_err(|e| failed("listing selfagent containers", e))?;
            Ok(all
                .into_iter()
                .map(|c| Listed {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    status: c.status.unwrap_or_default(),
                    labels: c.labels.unwrap_or_default(),
                    ports: c
                        .ports
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| Some((p.private_port, p.public_port?)))
                        .collect(),
                })
                .collect())
        })
    }

    fn rename<'a>(&'a self, id: &'a str, name: &'a str) -> Fut<'a, Result<bool, SandboxError>> {
        Box::pin(async move {
            let options = RenameContainerOptionsBuilder::default().name(name).build();
            match self.client.rename_container(id, options).await {
                Ok(()) => Ok(true),
                Err(e) if matches!(status(&e), Some(400 | 404 | 409)) => Ok(false),
                Err(e) => Err(failed(
                    format!("renaming sandbox {} to {name}", short(id)),
                    e,
                )),
            }
        })
    }

    fn logs<'a>(&'a self, id: &'a str, tail: usize) -> Fut<'a, String> {
        Box::pin(async move {
            let options = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .tail(&tail.to_string())
                .build();
            let mut logs = String::new();
            let mut stream = self.client.logs(id, Some(options));
            while let Some(Ok(chunk)) = stream.next().await {
                logs.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
            logs
        })
    }

    fn wait_exit<'a>(&'a self, id: &'a str) -> Fut<'a, Option<i64>> {
        Box::pin(async move {
            // Docker's wait API: an event, not a poll.
            let options = WaitContainerOptionsBuilder::default()
                .condition("not-running")
                .build();
            let mut stream = self.client.wait_container(id, Some(options));
            match stream.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(ApiError::DockerContainerWaitError { code, .. })) => Some(code),
                Some(Err(_)) | None => None,
            }
        })
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        request: ExecRequest,
    ) -> Fut<'a, Result<Attached, SandboxError>> {
        Box::pin(async move {
            let shown = request.cmd.first().cloned().unwrap_or_default();
            let exec_error = |e: ApiError| match status(&e) {
                Some(404 | 409) => SandboxError::NotRunning {
                    id: short(id).to_owned(),
                    status: "gone or stopped".into(),
                },
                _ => failed(format!("running `{shown}` in sandbox {}", short(id)), e),
            };
            let created = self
                .client
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(request.cmd.clone()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(request.stderr),
                        attach_stdin: Some(request.stdin),
                        env: Some(request.env.clone()),
                        user: Some(request.user.clone()),
                        working_dir: request.workdir.clone(),
                        ..Default::default()
                    },
                )
                .await
                .map_err(exec_error)?;
            let StartExecResults::Attached { output, input } = self
                .client
                .start_exec(&created.id, None)
                .await
                .map_err(exec_error)?
            else {
                return Err(SandboxError::io(
                    format!("running `{shown}`"),
                    "the command started detached",
                ));
            };
            let output = output
                .filter_map(move |chunk| {
                    let shown = shown.clone();
                    async move {
                        match chunk {
                            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                                Some(Ok((Output::Stdout, message)))
                            }
                            Ok(LogOutput::StdErr { message }) => {
                                Some(Ok((Output::Stderr, message)))
                            }
                            Ok(LogOutput::StdIn { .. }) => None,
                            Err(e) => {
                                Some(Err(failed(format!("reading the output of `{shown}`"), e)))
                            }
                        }
                    }
                })
                .boxed();
            Ok(Attached {
                id: created.id,
                output,
                input,
            })
        })
    }

    fn exec_exit_code<'a>(&'a self, exec: &'a str) -> Fut<'a, Result<Option<i64>, SandboxError>> {
        Box::pin(async move {
            self.client
                .inspect_exec(exec)
                .await
                .map(|i| i.exit_code)
                .map_err(|e| failed("reading a command's exit code", e))
        })
    }

    fn put_archive<'a>(
        &'a self,
        id: &'a str,
        dir: &'a str,
        tar: Vec<u8>,
    ) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            let options = UploadToContainerOptionsBuilder::default().path(dir).build();
            match self
                .client
                .upload_to_container(id, Some(options), bollard::body_full(tar.into()))
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if status(&e) == Some(404) => Err(SandboxError::NoSuchFile {
                    sandbox: short(id).to_owned(),
                    path: dir.to_owned(),
                }),
                Err(e) => Err(failed(
                    format!("writing into {dir} in sandbox {}", short(id)),
                    e,
                )),
            }
        })
    }

    fn get_archive(&self, id: &str, path: &str) -> BoxStream<'static, Result<Bytes, SandboxError>> {
        let sandbox = short(id).to_owned();
        let shown = path.to_owned();
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        self.client
            .download_from_container(id, Some(options))
            .map_err(move |e| match e {
                ApiError::DockerResponseServerError {
                    status_code: 404,
                    message,
                } if !message.to_ascii_lowercase().contains("no such container") => {
                    SandboxError::NoSuchFile {
                        sandbox: sandbox.clone(),
                        path: shown.clone(),
                    }
                }
                e if status(&e) == Some(404) => SandboxError::NotRunning {
                    id: sandbox.clone(),
                    status: "gone".into(),
                },
                e => failed(format!("reading {shown} from sandbox {sandbox}"), e),
            })
            .boxed()
    }

    fn remove_volume<'a>(&'a self, name: &'a str) -> Fut<'a, Result<bool, SandboxError>> {
        Box::pin(async move {
            match self
                .client
                .remove_volume(name, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => Ok(true),
                Err(e) if status(&e) == Some(404) => Ok(false),
                Err(e) => Err(failed(format!("removing volume {name}"), e)),
            }
        })
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn images(&self) -> Option<&dyn Images> {
        Some(self)
    }
}

impl Snapshots for Docker {
    fn changed_bytes<'a>(&'a self, id: &'a str) -> Fut<'a, Result<u64, SandboxError>> {
        Box::pin(async move {
            let options = InspectContainerOptionsBuilder::default().size(true).build();
            let info = self
                .client
                .inspect_container(id, Some(options))
                .await
                .map_err(|e| {
                    failed(format!("measuring the changes of sandbox {}", short(id)), e)
                })?;
            Ok(info.size_rw.unwrap_or(0).max(0) as u64)
        })
    }

    fn commit<'a>(
        &'a self,
        id: &'a str,
        (repo, tag): (&'a str, &'a str),
        labels: HashMap<String, String>,
        comment: &'a str,
        with_home: bool,
    ) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            let image = format!("{repo}:{tag}");
            let commit = |container: &str, comment: String| {
                let options = CommitContainerOptionsBuilder::default()
                    .container(container)
                    .repo(repo)
                    .tag(tag)
                    .comment(&comment)
                    .pause(true)
                    .build();
                let config = ContainerConfig {
                    labels: Some(labels.clone()),
                    ..Default::default()
                };
                self.client.commit_container(options, config)
            };
            let committed = commit(id, comment.to_owned())
                .await
                .map_err(|e| failed(format!("committing sandbox {} to {image}", short(id)), e))?;
            if !with_home {
                return Ok(());
            }
            // The home directory is a volume, which a commit leaves out: copy it into a
            // container of the committed image and commit that. Never started: only its
            // filesystem is written to, and its configuration (the image's own, entrypoint
            // and all) is what the next commit keeps.
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                host_config: Some(HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let temp = self
                .client
                .create_container(None::<CreateContainerOptions>, body)
                .await
                .map_err(|e| failed(format!("preparing {image}"), e))?
                .id;
            let baked = async {
                let home = self
                    .client
                    .download_from_container(
                        id,
                        Some(
                            DownloadFromContainerOptionsBuilder::default()
                                .path("/home/user")
                                .build(),
                        ),
                    )
                    .map_err(std::io::Error::other);
                self.client
                    .upload_to_container(
                        &temp,
                        Some(
                            UploadToContainerOptionsBuilder::default()
                                .path("/home")
                                .copy_uidgid("1")
                                .build(),
                        ),
                        bollard::body_try_stream(home),
                    )
                    .await
                    .map_err(|e| {
                        failed(
                            format!("copying the home directory of {} into {image}", short(id)),
                            e,
                        )
                    })?;
                commit(&temp, format!("{comment}, with its home"))
                    .await
                    .map_err(|e| failed(format!("committing {image}"), e))
            }
            .await;
            let _ = Provider::remove(self, &temp).await;
            baked?;
            // The first commit, now untagged.
            if !committed.id.is_empty() {
                let _ = self.remove_image(&committed.id, false).await;
            }
            Ok(())
        })
    }

    fn all_images(&self) -> Fut<'_, Result<Vec<ImageInfo>, SandboxError>> {
        Box::pin(async move {
            let images = self
                .client
                .list_images(Some(ListImagesOptionsBuilder::default().all(true).build()))
                .await
                .map_err(|e| failed("listing images", e))?;
            Ok(images
                .into_iter()
                .map(|i| ImageInfo {
                    id: i.id,
                    parent: i.parent_id,
                    size: i.size,
                    created: i.created,
                    created_at: None,
                    tags: i.repo_tags,
                    labels: i.labels,
                })
                .collect())
        })
    }

    fn remove_image<'a>(
        &'a self,
        image: &'a str,
        force: bool,
    ) -> Fut<'a, Result<Removed, SandboxError>> {
        Box::pin(async move {
            let options = RemoveImageOptionsBuilder::default().force(force).build();
            match self.client.remove_image(image, Some(options), None).await {
                Ok(_) => Ok(Removed::Removed),
                Err(e) if status(&e) == Some(404) => Ok(Removed::Gone),
                Err(e) if status(&e) == Some(409) => Ok(Removed::InUse),
                Err(e) => Err(failed(format!("removing image {image}"), e)),
            }
        })
    }
}

impl Images for Docker {
    fn build<'a>(
        &'a self,
        context: Vec<u8>,
        request: BuildRequest,
    ) -> BoxStream<'a, Result<BuildItem, SandboxError>> {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&request.dockerfile)
            .t(&request.tag)
            .rm(true)
            .forcerm(true)
            .nocache(request.no_cache)
            .buildargs(&request.args)
            .labels(&request.labels)
            .build();
        let tag = request.tag.clone();
        // Whether the stream named the new image; engines that do not are asked afterwards.
        let named = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = named.clone();
        let stream = self
            .client
            .build_image(options, None, Some(bollard::body_full(context.into())))
            .map(move |item| {
                let info = item.map_err(|e| failed(format!("building {tag}"), e))?;
                if let Some(detail) = info.error_detail {
                    return Ok(BuildItem::Error(
                        detail.message.unwrap_or_else(|| "unknown error".into()),
                    ));
                }
                if let Some(id) = info.aux.and_then(|aux| aux.id) {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(BuildItem::Id(id));
                }
                Ok(BuildItem::Text(
                    info.stream.or(info.status).unwrap_or_default(),
                ))
            });
        let tag = request.tag;
        let client = &self.client;
        let last = futures_util::stream::once(async move {
            if named.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            Some(match client.inspect_image(&tag).await {
                Ok(info) => Ok(BuildItem::Id(info.id.unwrap_or_default())),
                Err(e) => Err(failed(format!("inspecting the new image {tag}"), e)),
            })
        })
        .filter_map(|item| async move { item });
        stream.chain(last).boxed()
    }

    fn pull<'a>(&'a self, image: &'a str) -> Fut<'a, Result<(), String>> {
        Box::pin(async move {
            let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
            let options = CreateImageOptionsBuilder::default()
                .from_image(name)
                .tag(tag)
                .build();
            let mut pull = self.client.create_image(Some(options), None, None);
            while let Some(item) = pull.next().await {
                item.map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}
