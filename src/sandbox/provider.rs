//! The provider seam: what selfagent needs from whatever runs its desktop containers.
//!
//! Everything above this trait ([`Engine`](super::Engine), [`Sandbox`](super::Sandbox), the
//! pool, snapshots, files, tunnels) speaks in these terms: a container described by a
//! [`ContainerPlan`], found by labels, claimed by an atomic rename, run commands in with
//! attached streams, files moved as tar archives. Docker ([`super::docker`]) is one
//! provider; a Kubernetes one (docs/SCALING.md) would be another, and the tests' in-memory
//! one (`memory`) runs the pool's races without any engine. Snapshots and image builds are
//! optional capabilities: a provider without them says so and `sandbox snapshot`, `fork`
//! and `sandbox build` explain that they are not available there.
//!
//! Rules for implementations: errors say what was being done and carry the provider's own
//! error as a boxed source ([`SandboxError::Provider`]); "not found" is
//! [`SandboxError::NotFound`], a container that is gone or stopped under an exec is
//! [`SandboxError::NotRunning`]; removing what is gone is not an error.

use super::{Network, SandboxError};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncWrite;

/// A boxed future, as the trait's methods return (the trait is used as `dyn Provider`).
pub type Fut<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A container to create, in neutral terms. The hardening is part of the plan, not left to
/// each provider to remember.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerPlan {
    pub image: String,
    /// A unique name (pool members' names are their state; see the `pool` module).
    pub name: Option<String>,
    pub hostname: String,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// Replaces the image's entrypoint (an inspector only sleeps).
    pub entrypoint: Option<Vec<String>>,
    pub network: Network,
    /// Container ports published on 127.0.0.1 (random host ports), with a network.
    pub publish: Vec<u16>,
    /// Bytes of memory (swap included).
    pub memory: i64,
    pub cpus: f64,
    pub pids: i64,
    /// Bytes of /dev/shm (`None`: the provider's default).
    pub shm: Option<i64>,
    /// Capabilities kept; every other one is dropped.
    pub keep_caps: Vec<String>,
    /// Let setuid programs raise privileges (no `no-new-privileges`): only the opt-in
    /// desktop that grants sudo.
    pub allow_setuid: bool,
    pub sysctls: HashMap<String, String>,
    /// Mount point and options of each tmpfs (never part of a snapshot).
    pub tmpfs: Vec<(String, String)>,
    /// A named volume and where it is mounted.
    pub volumes: Vec<(String, String)>,
    /// Started again with the engine unless stopped on purpose.
    pub restart: bool,
}

/// What a provider knows of one container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerState {
    pub id: String,
    /// `running`, `exited`, `created`, ...
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub labels: HashMap<String, String>,
    pub env: HashMap<String, String>,
    /// Container port to host port on 127.0.0.1.
    pub ports: HashMap<u16, u16>,
    /// The home directory is a named volume (a persistent desktop's).
    pub home_is_volume: bool,
}

impl ContainerState {
    pub fn running(&self) -> bool {
        self.status == "running"
    }
}

/// One container as a listing shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listed {
    pub id: String,
    /// Its unique name.
    pub name: String,
    pub image: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
    /// Human words: `Up 3 minutes`.
    pub status: String,
    pub labels: HashMap<String, String>,
    /// Container port to host port on 127.0.0.1.
    pub ports: HashMap<u16, u16>,
}

/// A command to run in a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    pub user: String,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Attach stdin (the caller writes to [`Attached::input`]).
    pub stdin: bool,
    /// Attach stderr too.
    pub stderr: bool,
}

/// Which stream a chunk of a command's output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A running command's streams.
pub struct Attached {
    /// Its id, for [`Provider::exec_exit_code`].
    pub id: String,
    pub output: BoxStream<'static, Result<(Output, Bytes), SandboxError>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

/// An image as the provider describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    /// Its parent's id (empty for none): a snapshot's own size is its size minus its parent's.
    pub parent: String,
    pub size: i64,
    /// Seconds since the epoch.
    pub created: i64,
    /// RFC 3339, when known.
    pub created_at: Option<String>,
    /// `repo:tag` names; `<none>:<none>` for none.
    pub tags: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// How an image removal went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Removed,
    /// It was not there.
    Gone,
    /// A container still uses it (a removal that was not forced).
    InUse,
}

/// Runs desktop containers. See the module docs.
pub trait Provider: Send + Sync {
    /// `docker`, `memory`: for messages.
    fn kind(&self) -> &'static str;
    /// Whether it answers (an [`SandboxError::Engine`] when not).
    fn ping(&self) -> Fut<'_, Result<(), SandboxError>>;
    /// Its version, when it says.
    fn version(&self) -> Fut<'_, Option<String>>;
    /// An image, `None` when it is not there.
    fn image<'a>(&'a self, image: &'a str) -> Fut<'a, Result<Option<ImageInfo>, SandboxError>>;
    /// Creates a container (not started); returns its id.
    fn create<'a>(&'a self, plan: &'a ContainerPlan) -> Fut<'a, Result<String, SandboxError>>;
    /// Starts a container (one running already is fine).
    fn start<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>>;
    /// Stops a container, killing it after `grace` (one stopped already is fine).
    fn stop<'a>(&'a self, id: &'a str, grace: Duration) -> Fut<'a, Result<(), SandboxError>>;
    /// Removes a container, running or not, with its anonymous volumes (gone is fine).
    fn remove<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>>;
    fn inspect<'a>(&'a self, id: &'a str) -> Fut<'a, Result<ContainerState, SandboxError>>;
    /// Every container carrying all of `labels` (`key` or `key=value`), running or not.
    fn list<'a>(&'a self, labels: &'a [&'a str]) -> Fut<'a, Result<Vec<Listed>, SandboxError>>;
    /// Renames a container. Names are unique and renaming to the name a container has
    /// already fails, so this is an atomic claim: `Ok(false)` when someone else renamed it
    /// first, or it is gone.
    fn rename<'a>(&'a self, id: &'a str, name: &'a str) -> Fut<'a, Result<bool, SandboxError>>;
    /// The last `tail` lines of its output.
    fn logs<'a>(&'a self, id: &'a str, tail: usize) -> Fut<'a, String>;
    /// Resolves when the container stops, with its exit code when that can be learnt.
    fn wait_exit<'a>(&'a self, id: &'a str) -> Fut<'a, Option<i64>>;
    /// Starts a command with its streams attached.
    fn exec<'a>(
        &'a self,
        id: &'a str,
        request: ExecRequest,
    ) -> Fut<'a, Result<Attached, SandboxError>>;
    /// A finished command's exit code.
    fn exec_exit_code<'a>(&'a self, exec: &'a str) -> Fut<'a, Result<Option<i64>, SandboxError>>;
    /// Unpacks a tar archive into directory `dir` ([`SandboxError::NoSuchFile`] when `dir`
    /// is missing).
    fn put_archive<'a>(
        &'a self,
        id: &'a str,
        dir: &'a str,
        tar: Vec<u8>,
    ) -> Fut<'a, Result<(), SandboxError>>;
    /// The tar archive of `path`, as a stream ([`SandboxError::NoSuchFile`] when missing).
    fn get_archive(&self, id: &str, path: &str) -> BoxStream<'static, Result<Bytes, SandboxError>>;
    /// Removes a named volume; `false` when there was none.
    fn remove_volume<'a>(&'a self, name: &'a str) -> Fut<'a, Result<bool, SandboxError>>;
    /// Saving containers as images, when the provider can.
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
    /// Building and pulling images, when the provider can.
    fn images(&self) -> Option<&dyn Images> {
        None
    }
}

/// The snapshot capability: a container's filesystem saved as an image.
pub trait Snapshots: Send + Sync {
    /// Bytes the container's filesystem has changed (apparent sizes).
    fn changed_bytes<'a>(&'a self, id: &'a str) -> Fut<'a, Result<u64, SandboxError>>;
    /// Commits the container (paused meanwhile) to `repo:tag` with `labels` (which replace
    /// the container's own of the same keys). With `with_home`, a home directory kept on a
    /// volume (which a commit leaves out) is copied into the image too.
    fn commit<'a>(
        &'a self,
        id: &'a str,
        image: (&'a str, &'a str),
        labels: HashMap<String, String>,
        comment: &'a str,
        with_home: bool,
    ) -> Fut<'a, Result<(), SandboxError>>;
    /// Every image.
    fn all_images(&self) -> Fut<'_, Result<Vec<ImageInfo>, SandboxError>>;
    /// Removes an image by name or id.
    fn remove_image<'a>(
        &'a self,
        image: &'a str,
        force: bool,
    ) -> Fut<'a, Result<Removed, SandboxError>>;
}

/// One item of an image build's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildItem {
    /// Lines of output.
    Text(String),
    /// The build failed, with this message.
    Error(String),
    /// The new image's id.
    Id(String),
}

/// What an image build is given.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    pub tag: String,
    pub dockerfile: String,
    pub args: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub no_cache: bool,
}

/// The image capability: building from a context and pulling from a registry.
pub trait Images: Send + Sync {
    /// Builds `context` (a tar archive); the stream reports as it goes.
    fn build<'a>(
        &'a self,
        context: Vec<u8>,
        request: BuildRequest,
    ) -> BoxStream<'a, Result<BuildItem, SandboxError>>;
    /// Pulls `image` from its registry; the reason when it cannot.
    fn pull<'a>(&'a self, image: &'a str) -> Fut<'a, Result<(), String>>;
}
