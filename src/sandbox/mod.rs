//! Desktop containers: image, lifecycle, exec, files, snapshots.
//!
//! [`Engine`] is one place desktops run, through a [`Provider`] (the seam: Docker's is in
//! [`docker`], the only module that names the Docker API; see `provider`). Errors are
//! [`SandboxError`]s that say what was being done. [`Engine::create`] starts a hardened
//! desktop container and returns a [`Sandbox`] handle; [`Engine::get`] rebuilds the handle of
//! a running one from its labels and environment, so any selfagent process can drive a
//! desktop another one started.
//!
//! Rules (docs/ARCHITECTURE.md, "Security model"): every container carries `selfagent.*` labels; ports
//! publish on 127.0.0.1 only, on random host ports; VNC has a random password, X11 a random
//! cookie, the web view a random token; all capabilities are dropped, no-new-privileges is
//! set, memory, CPU and pid limits apply. A TTL stops the desktop from inside the container
//! even when no selfagent process is left to do it; `prune` removes what is expired, exited or
//! orphaned.

pub mod a11y;
pub mod docker;
mod exec;
mod files;
pub mod image;
pub mod leases;
#[cfg(test)]
pub mod memory;
pub mod provider;
pub mod snapshot;
mod tunnel;
pub mod viewsock;

pub use exec::{ExecOptions, ExecOutput, Process};
pub use files::{CopyReport, FileStat, HOME, MAX_READ, sandbox_path, unpack};
pub use snapshot::{SnapshotInfo, snapshot_image};

pub use provider::Provider;

use provider::{ContainerPlan, Listed};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// The image `selfagent sandbox build` makes and `sandbox up` starts by default.
pub const DEFAULT_IMAGE: &str = "selfagent-desktop:latest";

pub const LABEL_CREATED: &str = "selfagent.created";
pub const LABEL_TTL: &str = "selfagent.ttl";
pub const LABEL_SESSION: &str = "selfagent.session";
pub const LABEL_NAME: &str = "selfagent.name";
pub const LABEL_OWNER: &str = "selfagent.owner";
pub const LABEL_NETWORK: &str = "selfagent.network";
/// A warm pool's member: the pool's key (see the `pool` module).
pub const LABEL_POOL: &str = "selfagent.pool";
/// A pool member's desktop, as the pool describes it (JSON), for `pool ls`.
pub const LABEL_POOL_SPEC: &str = "selfagent.pool.spec";
/// The pool's size when it was filled.
pub const LABEL_POOL_SIZE: &str = "selfagent.pool.size";
/// A persistent desktop (`sandbox up --persist`): never pruned.
pub const LABEL_PERSIST: &str = "selfagent.persist";

/// The named volume a persistent desktop keeps its home directory on.
pub fn home_volume(name: &str) -> String {
    format!("selfagent-home-{name}")
}

/// Container name prefixes of a pool member's states: starting, ready to lease, leased.
pub const POOL_WARMING: &str = "selfagent-pw-";
pub const POOL_READY: &str = "selfagent-pr-";
pub const POOL_LEASED: &str = "selfagent-pl-";

/// The pool state a container name says.
pub fn pool_state(container_name: &str) -> &'static str {
    if container_name.starts_with(POOL_READY) {
        "ready"
    } else if container_name.starts_with(POOL_LEASED) {
        "leased"
    } else {
        "warming"
    }
}

/// Where the credentials go before the container starts (root only; the entrypoint reads
/// and deletes the file). Never the environment: docker keeps that in the container's
/// config, and every image committed from it carries it.
const BOOT_DIR: &str = "/etc/selfagent";
/// Tmpfs mounts (never in an image or a snapshot): the services' credentials (uid 999,
/// the X server and the view), and root's copy, read back by [`Engine::get`].
const SERVICES_DIR: &str = "/run/selfagent";
const ROOT_DIR: &str = "/run/selfagent-root";
/// The user the desktop's services run as (see sandbox/rootfs/usr/local/bin/selfagent-desktop).
pub(crate) const SERVICES_USER: &str = "selfagent";
/// The desktop's user: the agent's programs, and every command selfagent runs for it.
pub(crate) const DESKTOP_USER: &str = "user";

const PORT_VNC: u16 = 5900;
const PORT_X11: u16 = 6000;
/// A privileged port: only the view (given the capability) may bind it, not the agent.
const PORT_VIEW: u16 = 80;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "cannot reach the Docker engine at {host}: {source}\n  is dockerd running there? (DOCKER_HOST or --engine say where)"
    )]
    Engine {
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A provider's call failed: what was being done, and the provider's own error.
    #[error("{doing}: {source}")]
    Provider {
        doing: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {image} is not there: {}", if image.starts_with(snapshot::SAVED_REPO) {
        "no such saved snapshot (`selfagent sandbox snapshots` lists them)"
    } else {
        "build it with `selfagent sandbox build`"
    })]
    ImageMissing { image: String },
    #[error(
        "the base image {base} is missing and cannot be pulled ({reason}); make it locally with \
         `selfagent sandbox base` (runs sandbox/bootstrap-base.sh: needs root and debootstrap)"
    )]
    BaseMissing { base: String, reason: String },
    #[error("no selfagent sandbox with id or name '{0}' (see `selfagent sandbox ls`)")]
    NotFound(String),
    #[error(
        "sandbox {id} is not running (it is {status}); start a new one with `selfagent sandbox up`"
    )]
    NotRunning { id: String, status: String },
    #[error("sandbox {id} stopped while starting (exit code {code}); it printed:\n{logs}")]
    Died {
        id: String,
        code: String,
        logs: String,
    },
    #[error("no such file in sandbox {sandbox}: {path}")]
    NoSuchFile { sandbox: String, path: String },
    #[error("{path} is too large: {size} bytes, more than the limit of {limit}")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("building the desktop image failed: {0}")]
    Build(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{doing}: {message}")]
    Io { doing: String, message: String },
}

impl SandboxError {
    pub(crate) fn io(doing: impl Into<String>, e: impl fmt::Display) -> Self {
        Self::Io {
            doing: doing.into(),
            message: e.to_string(),
        }
    }
}

/// The first 12 characters of an id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    crate::text::prefix(id, 12)
}

/// Network access of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Docker's default bridge: the desktop reaches the network; its ports publish on
    /// 127.0.0.1.
    #[default]
    Bridge,
    /// No network at all. VNC and X11 are reached through `docker exec` tunnels, and only by
    /// the selfagent process that holds the handle.
    None,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub image: String,
    pub name: Option<String>,
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    /// Memory limit in bytes.
    pub memory: i64,
    /// CPU limit in CPUs (fractions allowed).
    pub cpus: f64,
    pub pids: i64,
    /// Shared memory for the browser, in bytes.
    pub shm: i64,
    pub network: Network,
    /// Seconds until the desktop stops itself; 0 for never.
    pub ttl: u64,
    /// Recording session this desktop belongs to, if any.
    pub session: Option<String>,
    /// Tie the container to this process: `prune` removes it once the process is gone.
    pub owned: bool,
    pub env: Vec<(String, String)>,
    /// More labels (a pool member's).
    pub labels: Vec<(String, String)>,
    /// The container's name, when not derived from `name` (pool members are renamed as
    /// they change hands).
    pub container_name: Option<String>,
    /// A desktop to come back to (needs `name`): the home directory on the named volume
    /// `selfagent-home-<name>`, started again when the Docker engine restarts, never pruned.
    pub persist: bool,
    /// The opt-in desktop that grants the agent sudo (password `password`, as OSWorld's VM):
    /// started without no-new-privileges and with Docker's default capabilities, so the
    /// agent can become root in its container (see the README's security defaults).
    pub sudo: bool,
}

/// The capabilities of a sudo desktop: Docker's default set but NET_RAW and MKNOD (what
/// `sudo apt-get install`, `chown`, `useradd` and the like need).
pub const SUDO_CAPS: [&str; 12] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// The label of a desktop that grants sudo.
pub const LABEL_SUDO: &str = "selfagent.sudo";

impl Default for SandboxSpec {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.into(),
            name: None,
            width: 1280,
            height: 800,
            dpi: 96,
            memory: 2 << 30,
            cpus: 2.0,
            pids: 1024,
            shm: 512 << 20,
            network: Network::Bridge,
            ttl: 3600,
            session: None,
            owned: false,
            env: Vec::new(),
            labels: Vec::new(),
            container_name: None,
            persist: false,
            sudo: false,
        }
    }
}

impl SandboxSpec {
    pub fn validate(&self) -> Result<(), SandboxError> {
        if !(320..=7680).contains(&self.width) || !(200..=4320).contains(&self.height) {
            return Err(SandboxError::Invalid(format!(
                "screen size {}x{} is out of range (320x200 to 7680x4320)",
                self.width, self.height
            )));
        }
        if !(48..=480).contains(&self.dpi) {
            return Err(SandboxError::Invalid(format!(
                "dpi {} is out of range (48 to 480)",
                self.dpi
            )));
        }
        if self.persist && self.name.is_none() {
            return Err(SandboxError::Invalid(
                "a persistent desktop needs a name (--name) to come back to".into(),
            ));
        }
        if self.memory < (256 << 20) {
            return Err(SandboxError::Invalid(
                "memory limit must be at least 256 MiB".into(),
            ));
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)))
        {
            return Err(SandboxError::Invalid(format!(
                "sandbox name '{name}' may only use letters, digits, '_', '.' and '-'"
            )));
        }
        Ok(())
    }
}

/// Credentials of one desktop. Never printed, logged or recorded; `Debug` hides them.
#[derive(Clone)]
pub struct Secrets {
    pub vnc_password: String,
    pub x11_cookie: String,
    pub view_token: String,
    /// The view-only URL's token: its connections' input is dropped by the view proxy.
    /// Empty for desktops made before view-only URLs existed.
    pub watch_token: String,
    /// Xvnc's view-only password (the second line of its password file): the VNC server
    /// ignores input from clients that authenticated with it.
    pub watch_password: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

impl Secrets {
    fn random() -> Self {
        let mut rng = rand::rng();
        let alnum = |rng: &mut rand::rngs::ThreadRng, n: usize| -> String {
            (0..n)
                .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
                .collect()
        };
        Self {
            // VNC authentication uses only the first 8 characters.
            vnc_password: alnum(&mut rng, 8),
            x11_cookie: (0..16)
                .map(|_| format!("{:02x}", rng.random::<u8>()))
                .collect(),
            view_token: alnum(&mut rng, 32),
            watch_token: alnum(&mut rng, 32),
            watch_password: alnum(&mut rng, 8),
        }
    }

    /// Every secret value, for redaction.
    pub fn values(&self) -> [&str; 5] {
        [
            &self.vnc_password,
            &self.x11_cookie,
            &self.view_token,
            &self.watch_token,
            &self.watch_password,
        ]
    }

    /// The boot file the entrypoint reads (`KEY=value` lines).
    pub(crate) fn boot_file(&self, with_view: bool) -> String {
        let mut text = format!(
            "VNC_PASSWORD={}\nX11_COOKIE={}\n",
            self.vnc_password, self.x11_cookie
        );
        if with_view {
            text.push_str(&format!(
                "VIEW_TOKEN={}\nWATCH_TOKEN={}\nWATCH_PASSWORD={}\n",
                self.view_token, self.watch_token, self.watch_password
            ));
        }
        text
    }

    pub(crate) fn parse_boot_file(text: &str) -> Self {
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        Self {
            vnc_password: value("VNC_PASSWORD"),
            x11_cookie: value("X11_COOKIE"),
            view_token: value("VIEW_TOKEN"),
            watch_token: value("WATCH_TOKEN"),
            watch_password: value("WATCH_PASSWORD"),
        }
    }

    pub(crate) fn cookie_bytes(&self) -> Vec<u8> {
        (0..self.x11_cookie.len() / 2)
            .filter_map(|i| u8::from_str_radix(&self.x11_cookie[2 * i..2 * i + 2], 16).ok())
            .collect()
    }
}

/// Where a desktop's services are reachable from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub vnc: SocketAddr,
    pub x11: SocketAddr,
    pub view: Option<SocketAddr>,
}

/// A running desktop container.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    id: String,
    name: String,
    width: u32,
    height: u32,
    network: Network,
    secrets: Secrets,
    published: Option<Endpoints>,
    tunnel: Arc<OnceCell<Endpoints>>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &(self.width, self.height))
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first 12 characters of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        crate::text::prefix(&self.id, 12)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn network(&self) -> Network {
        self.network
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The published endpoints, or (with no network, or an engine on another machine) local
    /// tunnels through `docker exec`.
    pub async fn endpoints(&self) -> Result<Endpoints, SandboxError> {
        if let Some(e) = self.published {
            return Ok(e);
        }
        self.tunnel
            .get_or_try_init(|| tunnel::open(self.clone()))
            .await
            .copied()
    }

    /// The same desktop reached through tunnels (the Docker API) instead of its published
    /// ports: what a remote engine's desktops always use; `bench` compares the two.
    pub fn through_tunnels(&self) -> Sandbox {
        Sandbox {
            published: None,
            tunnel: Arc::new(OnceCell::new()),
            ..self.clone()
        }
    }

    /// The VNC address a viewer on this machine can use (published sandboxes only).
    pub fn vnc_address(&self) -> Option<SocketAddr> {
        self.published.map(|e| e.vnc)
    }

    /// The address of the desktop's view (noVNC and its WebSocket), published sandboxes only.
    pub fn view_address(&self) -> Option<SocketAddr> {
        self.published?.view
    }

    /// The noVNC page with the token (and the VNC password, which noVNC needs) in it.
    pub fn view_url(&self) -> Option<String> {
        let view = self.published?.view?;
        Some(view_url(
            view,
            &self.secrets.view_token,
            &self.secrets.vnc_password,
            false,
        ))
    }

    /// The view-only URL: to share a desktop to watch without handing over control. The
    /// view proxy drops every input message of its connections, and Xvnc ignores input
    /// from its password; `None` without a view, or on a desktop made before it existed.
    pub fn watch_url(&self) -> Option<String> {
        let view = self.published?.view?;
        if self.secrets.watch_token.is_empty() {
            return None;
        }
        Some(view_url(
            view,
            &self.secrets.watch_token,
            &self.secrets.watch_password,
            true,
        ))
    }

    /// Stops and removes the container.
    pub async fn kill(&self) -> Result<(), SandboxError> {
        self.engine.remove(&self.id).await
    }

    /// Resolves when the container stops (Docker's wait API: an event, not a poll), with
    /// its exit code, or `None` if that could not be learnt.
    pub async fn wait_exit(&self) -> Option<i64> {
        self.engine.provider.wait_exit(&self.id).await
    }

    /// Why the desktop can no longer be used, when that is so: it exited (with its exit
    /// code), it was removed, or the engine is unreachable. A desktop whose display server
    /// died stops within moments; that is waited for (up to 2 s). `None` while it runs.
    pub async fn why_gone(&self) -> Option<String> {
        for _ in 0..20 {
            match self.engine.provider.inspect(&self.id).await {
                Ok(state) => {
                    if !state.running() {
                        let code = state
                            .exit_code
                            .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                        let oom = if state.oom_killed {
                            ", out of memory"
                        } else {
                            ""
                        };
                        return Some(format!(
                            "the desktop {} exited (exit code {code}{oom})",
                            self.short_id()
                        ));
                    }
                }
                Err(SandboxError::NotFound(_)) => {
                    return Some(format!(
                        "the desktop {} is gone (its container was removed)",
                        self.short_id()
                    ));
                }
                Err(e) => {
                    return Some(format!(
                        "the engine does not answer about desktop {}: {e}",
                        self.short_id()
                    ));
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    }

    /// Why the container stopped: its exit code and last output (after [`Sandbox::wait_exit`]).
    pub async fn died(&self) -> SandboxError {
        self.engine.died(&self.id).await
    }
}

/// One window's stream (`sandbox view --window`).
#[derive(Debug, Clone, Serialize)]
pub struct WindowStream {
    /// The stream's number: its VNC server listens on 5900+N inside the desktop.
    pub stream: u32,
    /// The X window id.
    pub window: String,
    pub title: String,
    pub url: String,
}

impl Sandbox {
    /// Serves the first visible window whose title matches `regex` as a stream of its own,
    /// following the window as it moves and resizes (x11vnc inside the desktop), and
    /// returns its URL (view-only with `view_only`). Each call adds a stream: several
    /// windows of one desktop can be watched side by side.
    pub async fn window_stream(
        &self,
        regex: &str,
        view_only: bool,
    ) -> Result<WindowStream, SandboxError> {
        self.start_stream(&[regex], view_only).await
    }

    /// [`Sandbox::window_stream`] of the window with this X id.
    pub async fn window_stream_of(
        &self,
        window: u32,
        view_only: bool,
    ) -> Result<WindowStream, SandboxError> {
        self.start_stream(&["--id", &window.to_string()], view_only)
            .await
    }

    async fn start_stream(
        &self,
        which: &[&str],
        view_only: bool,
    ) -> Result<WindowStream, SandboxError> {
        let Some(view) = self.published.and_then(|p| p.view) else {
            return Err(SandboxError::Invalid(
                "this desktop has no network, so it has no web view".into(),
            ));
        };
        let out = self
            .exec(
                &[&["/usr/local/bin/selfagent-stream"], which].concat(),
                &exec::ExecOptions {
                    user: Some("root".into()),
                    timeout: Some(std::time::Duration::from_secs(30)),
                    ..Default::default()
                },
            )
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(SandboxError::Invalid(if why.is_empty() {
                format!("the window stream did not start (exit {})", out.exit_code)
            } else {
                why
            }));
        }
        let mut parts = text.trim().splitn(3, ' ');
        let stream: u32 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| SandboxError::Invalid(format!("selfagent-stream said: {text}")))?;
        let window = parts.next().unwrap_or_default().to_owned();
        let title = parts.next().unwrap_or_default().to_owned();
        let (token, password) = if view_only {
            (&self.secrets.watch_token, &self.secrets.watch_password)
        } else {
            (&self.secrets.view_token, &self.secrets.vnc_password)
        };
        let url = view_url(view, token, password, view_only).replace(
            "websockify%3Ftoken%3D",
            &format!("websockify%3Fstream%3D{stream}%26token%3D"),
        );
        Ok(WindowStream {
            stream,
            window,
            title,
            url,
        })
    }
}

/// A noVNC URL. The WebSocket path carries the token too (`path=websockify?token=…`), so
/// the proxy knows which kind of connection it serves even when a browser holds the
/// cookies of both.
fn view_url(addr: SocketAddr, token: &str, password: &str, view_only: bool) -> String {
    format!(
        "http://{addr}/vnc.html?token={token}&path=websockify%3Ftoken%3D{token}&autoconnect=1&resize=scale&reconnect=1{}&password={password}",
        if view_only { "&view_only=1" } else { "" }
    )
}

/// How long a created, not yet started container counts as starting (a cold image can take
/// a while to unpack on a slow machine); after that `prune` takes it.
const START_GRACE_SECS: u64 = 300;

/// One row of `sandbox ls`.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Docker's state: running, exited, created, ...
    pub state: String,
    pub status: String,
    pub created: u64,
    pub ttl: u64,
    /// Seconds since the epoch when the TTL runs out (absent without a TTL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    pub expired: bool,
    pub orphaned: bool,
    /// Made by a selfagent process that is still running: while it is, a container that is
    /// not running is that process's to report and remove (it may be starting it right now).
    #[serde(skip)]
    pub owner_alive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub view: Option<String>,
    /// Docker's name for the container (pool members change theirs as they change hands).
    pub container_name: String,
    /// A desktop to come back to (`--persist`): kept when stopped, never pruned.
    pub persistent: bool,
    /// A warm pool's member: the pool and its state (`warming`, `ready`, `leased`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_state: Option<String>,
    /// Every label, for the pool's bookkeeping.
    #[serde(skip)]
    pub labels: HashMap<String, String>,
    /// The engine it runs on, when several were listed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub engine: String,
}

/// What `prune` removed, and why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub removed: Vec<PrunedSandbox>,
    /// Images of saved snapshots removed by name earlier, now used by no desktop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrunedSandbox {
    pub id: String,
    pub name: String,
    pub reason: String,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How this process reaches a desktop's VNC and X11 servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// The ports the engine published on 127.0.0.1: the fast path, for an engine on this
    /// machine.
    Direct,
    /// Through the Docker API (one `docker exec` relay per connection): for an engine on
    /// another machine, whose published ports are on *its* loopback, so nothing needs a
    /// routable address or an open firewall.
    Tunnels,
}

impl Reach {
    /// From `SELFAGENT_REACH` (`direct`, `tunnels`) if set, else from the engine's address:
    /// a Unix socket or a loopback `tcp://` is this machine, anything else is not.
    pub fn for_host(host: &str, forced: Option<&str>) -> Result<Self, String> {
        match forced.map(str::trim) {
            Some("direct") => return Ok(Reach::Direct),
            Some("tunnels") => return Ok(Reach::Tunnels),
            Some("") | None => {}
            Some(other) => {
                return Err(format!(
                    "SELFAGENT_REACH={other:?}: expected `direct` or `tunnels`"
                ));
            }
        }
        let rest = host.split_once("://").map_or(host, |(_, r)| r);
        if host.starts_with("unix://") || host.starts_with("npipe://") || !host.contains("://") {
            return Ok(Reach::Direct);
        }
        let authority = rest.split('/').next().unwrap_or("");
        let hostname = authority
            .rsplit_once('@')
            .map_or(authority, |(_, h)| h)
            .trim_start_matches('[');
        let hostname = hostname
            .split_once(']')
            .map_or_else(|| hostname.split(':').next().unwrap_or(""), |(h, _)| h);
        let local =
            host.starts_with("tcp://") && matches!(hostname, "127.0.0.1" | "localhost" | "::1");
        Ok(if local { Reach::Direct } else { Reach::Tunnels })
    }
}

/// A Docker engine to run desktops on, as `--engine` and `[[engines]]` give it:
/// `URL[,max=N][,weight=W][,reach=direct|tunnels]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// `unix:///var/run/docker.sock`, `tcp://HOST:PORT`.
    pub url: String,
    /// At most this many of its desktops at once (a batch waits for a free place).
    #[serde(default)]
    pub max_desktops: Option<usize>,
    /// Its share of the episodes relative to the others (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// How its desktops are reached; guessed from the URL when absent (see [`Reach`]).
    #[serde(default)]
    pub reach: Option<Reach>,
}

fn default_weight() -> f64 {
    1.0
}

impl std::str::FromStr for EngineSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(',');
        let url = parts.next().unwrap_or_default().trim().to_owned();
        if !["unix://", "tcp://", "http://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(format!(
                "engine {url:?}: expected unix:///PATH or tcp://HOST:PORT (TLS and ssh:// are \
                 not compiled in: forward the socket with `ssh -NL`)"
            ));
        }
        let mut spec = EngineSpec {
            url,
            max_desktops: None,
            weight: 1.0,
            reach: None,
        };
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("engine option {part:?}: expected KEY=VALUE"))?;
            match k.trim() {
                "max" | "max_desktops" => {
                    spec.max_desktops = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| format!("engine max={v}: expected a number above 0"))?,
                    );
                }
                "weight" => {
                    spec.weight = v
                        .parse()
                        .ok()
                        .filter(|w: &f64| *w > 0.0 && w.is_finite())
                        .ok_or_else(|| format!("engine weight={v}: expected a number above 0"))?;
                }
                "reach" => {
                    spec.reach = Some(match v.trim() {
                        "direct" => Reach::Direct,
                        "tunnels" => Reach::Tunnels,
                        other => {
                            return Err(format!(
                                "reach={other:?}: expected reach=direct or reach=tunnels"
                            ));
                        }
                    });
                }
                other => {
                    return Err(format!(
                        "engine option {other:?}: expected max, weight or reach"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// One place desktops run: a provider (a Docker engine, normally) and how its desktops
/// are reached.
#[derive(Clone)]
pub struct Engine {
    provider: Arc<dyn Provider>,
    reach: Reach,
    /// Where it is (`DOCKER_HOST`'s form), for messages and reports.
    url: String,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    /// Connects as the Docker CLI would (DOCKER_HOST or the local socket) and negotiates the
    /// API version.
    pub async fn connect() -> Result<Self, SandboxError> {
        let url =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        Self::connect_to(&EngineSpec {
            url,
            max_desktops: None,
            weight: 1.0,
            reach: None,
        })
        .await
    }

    /// Connects to the engine a spec names (see [`EngineSpec`]).
    pub async fn connect_to(spec: &EngineSpec) -> Result<Self, SandboxError> {
        let reach = match spec.reach {
            Some(r) => r,
            None => Reach::for_host(&spec.url, std::env::var("SELFAGENT_REACH").ok().as_deref())
                .map_err(SandboxError::Invalid)?,
        };
        let docker = docker::Docker::connect(&spec.url).await?;
        Ok(Self::with_provider(Arc::new(docker), &spec.url, reach))
    }

    /// An engine over any provider (`url` names it in messages and reports).
    pub fn with_provider(provider: Arc<dyn Provider>, url: &str, reach: Reach) -> Self {
        Self {
            provider,
            reach,
            url: url.to_owned(),
        }
    }

    /// An engine of containers that are only records (see `memory`).
    #[cfg(test)]
    pub(crate) fn in_memory() -> (Self, Arc<memory::Memory>) {
        let provider = Arc::new(memory::Memory::new());
        (
            Self::with_provider(provider.clone(), "memory://", Reach::Direct),
            provider,
        )
    }

    /// Where this engine is.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the engine answers within `within`.
    pub async fn answers(&self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.provider.ping()).await,
            Ok(Ok(()))
        )
    }

    /// How desktops of this engine are reached.
    pub fn reach(&self) -> Reach {
        self.reach
    }

    /// The same engine, its desktops reached as `reach` says.
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    /// What runs its desktops.
    pub fn provider(&self) -> &dyn Provider {
        self.provider.as_ref()
    }

    /// The provider's snapshot capability, or why there is none.
    pub(crate) fn snapshot_store(&self) -> Result<&dyn provider::Snapshots, SandboxError> {
        self.provider.snapshots().ok_or_else(|| {
            SandboxError::Invalid(format!(
                "the {} provider at {} cannot save snapshots",
                self.provider.kind(),
                self.url
            ))
        })
    }

    /// The provider's image capability, or why there is none.
    pub(crate) fn image_store(&self) -> Result<&dyn provider::Images, SandboxError> {
        self.provider.images().ok_or_else(|| {
            SandboxError::Invalid(format!(
                "the {} provider at {} cannot build or pull images",
                self.provider.kind(),
                self.url
            ))
        })
    }

    pub async fn image_exists(&self, image: &str) -> Result<bool, SandboxError> {
        Ok(self.provider.image(image).await?.is_some())
    }

    /// Creates and starts a desktop. Returns once the container runs; the desktop inside
    /// is ready when the desktop layer's `Desktop::connect` returns.
    pub async fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        spec.validate()?;
        let t0 = std::time::Instant::now();
        if !self.image_exists(&spec.image).await? {
            return Err(SandboxError::ImageMissing {
                image: spec.image.clone(),
            });
        }
        let secrets = Secrets::random();
        let mut env = vec![
            format!("SELFAGENT_WIDTH={}", spec.width),
            format!("SELFAGENT_HEIGHT={}", spec.height),
            format!("SELFAGENT_DPI={}", spec.dpi),
            format!("SELFAGENT_TTL={}", spec.ttl),
        ];
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        if spec.sudo {
            env.push("SELFAGENT_SUDO=1".to_owned());
        }

        let mut labels = HashMap::from([
            (LABEL_CREATED.to_owned(), now_secs().to_string()),
            (LABEL_TTL.to_owned(), spec.ttl.to_string()),
            (
                LABEL_SESSION.to_owned(),
                spec.session.clone().unwrap_or_default(),
            ),
            (
                LABEL_NETWORK.to_owned(),
                match spec.network {
                    Network::Bridge => "bridge".into(),
                    Network::None => "none".into(),
                },
            ),
        ]);
        if let Some(name) = &spec.name {
            labels.insert(LABEL_NAME.to_owned(), name.clone());
        }
        if spec.owned {
            labels.insert(LABEL_OWNER.to_owned(), crate::process::owner_token());
        }
        labels.extend(spec.labels.iter().cloned());
        if spec.persist {
            labels.insert(LABEL_PERSIST.to_owned(), "1".to_owned());
        }
        if spec.sudo {
            labels.insert(LABEL_SUDO.to_owned(), "1".to_owned());
        }

        let plan = ContainerPlan {
            image: spec.image.clone(),
            name: spec
                .container_name
                .clone()
                .or_else(|| spec.name.as_ref().map(|n| format!("selfagent-{n}"))),
            hostname: "desktop".into(),
            env,
            labels,
            entrypoint: None,
            network: spec.network,
            publish: vec![PORT_VNC, PORT_X11, PORT_VIEW],
            memory: spec.memory,
            cpus: spec.cpus,
            pids: spec.pids,
            shm: Some(spec.shm),
            // Root in the container keeps only what the entrypoint needs to start the
            // desktop's users and to stop them; the agent's processes (uid 1000) get none.
            keep_caps: if spec.sudo {
                SUDO_CAPS.map(String::from).to_vec()
            } else {
                ["SETUID", "SETGID", "KILL", "NET_BIND_SERVICE"]
                    .map(String::from)
                    .to_vec()
            },
            allow_setuid: spec.sudo,
            // Ports below 1024 privileged again (docker makes them free for all), so the
            // agent cannot bind the view's port.
            sysctls: HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_owned(),
                "1024".to_owned(),
            )]),
            // The desktop's credentials live here: never in the container's filesystem,
            // so never in a snapshot of it.
            tmpfs: vec![
                (
                    SERVICES_DIR.to_owned(),
                    "rw,nosuid,nodev,noexec,mode=0700,uid=999,gid=999,size=1m".to_owned(),
                ),
                (
                    ROOT_DIR.to_owned(),
                    "rw,nosuid,nodev,noexec,mode=0700,uid=0,gid=0,size=64k".to_owned(),
                ),
            ],
            volumes: spec
                .name
                .as_ref()
                .filter(|_| spec.persist)
                .map(|name| (home_volume(name), "/home/user".to_owned()))
                .into_iter()
                .collect(),
            // A desktop to come back to is started again with the engine.
            restart: spec.persist,
        };
        let id = self.provider.create(&plan).await?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "container created");
        if let Err(e) = self
            .write_boot_file(&id, &secrets, spec.network == Network::Bridge)
            .await
        {
            let _ = self.remove(&id).await;
            return Err(e);
        }
        if let Err(e) = self.provider.start(&id).await {
            let _ = self.remove(&id).await;
            return Err(e);
        }
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "container started");
        match self.handle(&id, Some(secrets)).await {
            Ok(sandbox) => Ok(sandbox),
            Err(SandboxError::NotRunning { .. }) => {
                // It died at once: say why, from its own output.
                let died = self.died(&id).await;
                let _ = self.remove(&id).await;
                Err(died)
            }
            Err(e) => {
                let _ = self.remove(&id).await;
                Err(e)
            }
        }
    }

    /// [`SandboxError::Died`] for a container that stopped: its exit code and last output.
    pub(crate) async fn died(&self, id: &str) -> SandboxError {
        let code = self
            .provider
            .inspect(id)
            .await
            .ok()
            .and_then(|s| s.exit_code)
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        let logs = self.provider.logs(id, 20).await;
        SandboxError::Died {
            id: short(id).to_owned(),
            code,
            logs: logs.trim_end().to_owned(),
        }
    }

    /// Puts the credentials where the entrypoint reads them, before the container starts.
    async fn write_boot_file(
        &self,
        id: &str,
        secrets: &Secrets,
        with_view: bool,
    ) -> Result<(), SandboxError> {
        let text = secrets.boot_file(with_view);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(text.len() as u64);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(now_secs());
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_data(&mut h, "boot", text.as_bytes())
            .map_err(|e| SandboxError::io("packing the credentials", e))?;
        let tar = builder
            .into_inner()
            .map_err(|e| SandboxError::io("packing the credentials", e))?;
        self.provider
            .put_archive(id, BOOT_DIR, tar)
            .await
            .map_err(|e| SandboxError::Provider {
                doing: format!(
                    "giving sandbox {} its credentials (is the image a selfagent desktop? rebuild it with `selfagent sandbox build`)",
                    short(id)
                ),
                source: Box::new(e),
            })
    }

    /// The credentials of a running desktop, from root's copy inside it (a desktop still
    /// starting has not made it yet: waited for briefly).
    async fn read_secrets(&self, id: &str) -> Result<Secrets, SandboxError> {
        let probe = Sandbox {
            engine: self.clone(),
            id: id.to_owned(),
            name: String::new(),
            width: 0,
            height: 0,
            network: Network::None,
            secrets: Secrets::parse_boot_file(""),
            published: None,
            tunnel: Arc::new(OnceCell::new()),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = probe
                .exec(
                    &["cat", &format!("{ROOT_DIR}/secrets")],
                    &ExecOptions {
                        user: Some("root".into()),
                        ..Default::default()
                    },
                )
                .await?;
            let secrets = Secrets::parse_boot_file(&out.stdout_text());
            if out.success() && !secrets.vnc_password.is_empty() {
                return Ok(secrets);
            }
            if std::time::Instant::now() >= deadline {
                return Err(SandboxError::Invalid(format!(
                    "container {} has selfagent labels but no credentials; was it started by this version of selfagent?",
                    crate::text::prefix(id, 12)
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The handle of a running sandbox, by id, id prefix or name.
    pub async fn get(&self, id_or_name: &str) -> Result<Sandbox, SandboxError> {
        self.handle(id_or_name, None).await
    }

    /// The handle of a running sandbox whose credentials are known (a pool's member).
    pub async fn get_with(&self, id: &str, secrets: Secrets) -> Result<Sandbox, SandboxError> {
        self.handle(id, Some(secrets)).await
    }

    /// Renames a container: Docker's names are unique and a rename to the name a container
    /// already has fails, so renaming to a name derived from the old one is an atomic claim.
    /// `Ok(false)`: someone else renamed it first (or it is gone).
    pub async fn rename(&self, id: &str, name: &str) -> Result<bool, SandboxError> {
        self.provider.rename(id, name).await
    }

    /// The handle of a running sandbox; its credentials are read from inside it unless
    /// given (by [`Engine::create`], which made them).
    async fn handle(
        &self,
        id_or_name: &str,
        secrets: Option<Secrets>,
    ) -> Result<Sandbox, SandboxError> {
        // A full id needs no lookup (a pool's lease is timed in milliseconds).
        let full = id_or_name.len() == 64 && id_or_name.bytes().all(|b| b.is_ascii_hexdigit());
        let resolved = if full {
            id_or_name.to_owned()
        } else {
            self.resolve(id_or_name).await?
        };
        let info = match self.provider.inspect(&resolved).await {
            Err(SandboxError::NotFound(_)) => {
                return Err(SandboxError::NotFound(id_or_name.to_owned()));
            }
            other => other?,
        };
        let id = info.id.clone();
        if !info.running() {
            return Err(SandboxError::NotRunning {
                id,
                status: info.status,
            });
        }
        let labels = info.labels;
        let env = info.env;
        let var = |k: &str| env.get(k).cloned().unwrap_or_default();
        let secrets = match secrets {
            Some(s) => s,
            None => self.read_secrets(&id).await?,
        };
        let network = if labels.get(LABEL_NETWORK).map(String::as_str) == Some("none") {
            Network::None
        } else {
            Network::Bridge
        };
        let published = match (network, self.reach) {
            (Network::None, _) | (_, Reach::Tunnels) => None,
            (Network::Bridge, Reach::Direct) => {
                let addr = |port: u16| -> Option<SocketAddr> {
                    let host_port = *info.ports.get(&port)?;
                    Some(SocketAddr::from(([127, 0, 0, 1], host_port)))
                };
                let (Some(vnc), Some(x11)) = (addr(PORT_VNC), addr(PORT_X11)) else {
                    return Err(SandboxError::Invalid(format!(
                        "sandbox {id} has no published VNC/X11 ports"
                    )));
                };
                Some(Endpoints {
                    vnc,
                    x11,
                    view: addr(PORT_VIEW),
                })
            }
        };
        let num = |k: &str, default: u32| var(k).parse().unwrap_or(default);
        Ok(Sandbox {
            engine: self.clone(),
            name: labels
                .get(LABEL_NAME)
                .cloned()
                .unwrap_or_else(|| short(&id).to_owned()),
            width: num("SELFAGENT_WIDTH", 1280),
            height: num("SELFAGENT_HEIGHT", 800),
            id,
            network,
            secrets,
            published,
            tunnel: Arc::new(OnceCell::new()),
        })
    }

    /// Finds the full id of a selfagent container by id, id prefix or name.
    async fn resolve(&self, id_or_name: &str) -> Result<String, SandboxError> {
        let all = self.containers_where(None).await?;
        let matches: Vec<&Listed> = all
            .iter()
            .filter(|c| {
                let name = c.labels.get(LABEL_NAME).map(String::as_str);
                c.id.starts_with(id_or_name) || name == Some(id_or_name)
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(SandboxError::NotFound(id_or_name.to_owned())),
            many => Err(SandboxError::Invalid(format!(
                "'{id_or_name}' matches {} sandboxes; give more of the id",
                many.len()
            ))),
        }
    }

    /// Selfagent containers, only those with the label `key=value` given as `label`.
    async fn containers_where(&self, label: Option<&str>) -> Result<Vec<Listed>, SandboxError> {
        let mut labels = vec![LABEL_CREATED];
        labels.extend(label);
        self.provider.list(&labels).await
    }

    /// Every selfagent container, running or not.
    pub async fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        self.list_where(None).await
    }

    /// The selfagent containers with the label `key=value` given as `label` (the engine
    /// filters, so a lease does not read every desktop's details).
    pub async fn list_where(&self, label: Option<&str>) -> Result<Vec<SandboxInfo>, SandboxError> {
        let now = now_secs();
        let mut out: Vec<SandboxInfo> = self
            .containers_where(label)
            .await?
            .into_iter()
            .map(|c| {
                let labels = c.labels;
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                let created: u64 = label(LABEL_CREATED).parse().unwrap_or(0);
                let ttl: u64 = label(LABEL_TTL).parse().unwrap_or(0);
                let expires = (ttl > 0).then_some(created + ttl);
                let id = c.id;
                let port = |private: u16| c.ports.get(&private).map(|p| format!("127.0.0.1:{p}"));
                let owner = label(LABEL_OWNER);
                let container_name = c.name;
                let pool = Some(label(LABEL_POOL)).filter(|p| !p.is_empty());
                let pool_state = pool
                    .as_ref()
                    .map(|_| pool_state(&container_name).to_owned());
                // A pool member's owner is its filler until it is ready; then nobody (it
                // waits for a lease); leased, the leaser (the pool keeps that).
                let orphaned = match pool_state.as_deref() {
                    Some("ready") => false,
                    Some("leased") => leases::lease_orphaned(&id),
                    _ => !owner.is_empty() && crate::process::owner_gone(&owner),
                };
                SandboxInfo {
                    name: labels
                        .get(LABEL_NAME)
                        .cloned()
                        .unwrap_or_else(|| short(&id).to_owned()),
                    id,
                    image: c.image,
                    state: c.state,
                    status: c.status,
                    created,
                    ttl,
                    expires,
                    expired: expires.is_some_and(|e| e <= now),
                    orphaned,
                    owner_alive: !owner.is_empty() && !crate::process::owner_gone(&owner),
                    session: Some(label(LABEL_SESSION)).filter(|s| !s.is_empty()),
                    vnc: port(PORT_VNC),
                    view: port(PORT_VIEW),
                    container_name,
                    persistent: labels.contains_key(LABEL_PERSIST),
                    pool,
                    pool_state,
                    labels,
                    engine: String::new(),
                }
            })
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.created));
        Ok(out)
    }

    /// Stops and removes a container (by id, prefix or name) with its anonymous volumes.
    pub async fn remove(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let id = match self.resolve(id_or_name).await {
            Ok(id) => id,
            // A full id that is not listed (being removed already) is tried as is.
            Err(SandboxError::NotFound(_)) if id_or_name.len() == 64 => id_or_name.to_owned(),
            Err(e) => return Err(e),
        };
        self.provider.remove(&id).await?;
        leases::forget(&id);
        Ok(())
    }

    /// Stops a desktop (by id, prefix or name); a persistent one keeps everything for
    /// [`Engine::start`].
    pub async fn stop(&self, id_or_name: &str) -> Result<(), SandboxError> {
        let id = self.resolve(id_or_name).await?;
        self.provider
            .stop(&id, std::time::Duration::from_secs(10))
            .await
    }

    /// Starts a stopped desktop again and returns its handle once it has credentials (it
    /// makes new ones as it starts).
    pub async fn start(&self, id_or_name: &str) -> Result<Sandbox, SandboxError> {
        let id = self.resolve(id_or_name).await?;
        self.provider.start(&id).await?;
        match self.handle(&id, None).await {
            Err(SandboxError::NotRunning { .. }) => Err(self.died(&id).await),
            other => other,
        }
    }

    /// Removes a persistent desktop's home volume (after its container is gone).
    pub async fn remove_home(&self, name: &str) -> Result<bool, SandboxError> {
        self.provider.remove_volume(&home_volume(name)).await
    }

    /// Removes every selfagent container that is expired, no longer running, or whose
    /// owning selfagent process is gone.
    pub async fn prune(&self) -> Result<PruneReport, SandboxError> {
        let mut report = PruneReport::default();
        for info in self.list().await? {
            if info.persistent {
                // Kept until removed by name, stopped or not.
                continue;
            }
            // A container between create and start is `created` (a detached one has no owner
            // to ask), and one that just died is `exited`: a living owner is about to report
            // its death with its logs. Either way a concurrent prune must not take it away.
            let starting = info.state == "created"
                && now_secs().saturating_sub(info.created) < START_GRACE_SECS;
            let left_to_owner = info.owner_alive && !info.expired;
            let reason = if info.state != "running" && !starting && !left_to_owner {
                Some(format!("not running ({})", info.state))
            } else if info.expired {
                Some("TTL expired".to_owned())
            } else if info.orphaned {
                Some("its selfagent process is gone".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                self.remove(&info.id).await?;
                report.removed.push(PrunedSandbox {
                    id: info.id,
                    name: info.name,
                    reason,
                });
            }
        }
        report.images = self.prune_unnamed_saved().await?;
        Ok(report)
    }
}

/// How long ago, human-readable: `5s`, `3m`, `2h`, `4d`.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_specs_parse_with_their_options_and_refuse_mistakes() {
        let spec: EngineSpec = "tcp://10.0.0.7:2375,max=4,weight=2,reach=tunnels"
            .parse()
            .unwrap();
        assert_eq!(
            spec,
            EngineSpec {
                url: "tcp://10.0.0.7:2375".into(),
                max_desktops: Some(4),
                weight: 2.0,
                reach: Some(Reach::Tunnels),
            }
        );
        let plain: EngineSpec = "unix:///var/run/docker.sock".parse().unwrap();
        assert_eq!(
            (plain.max_desktops, plain.weight, plain.reach),
            (None, 1.0, None)
        );
        for bad in [
            "10.0.0.7:2375",
            "ssh://me@box",
            "tcp://h:1,max=0",
            "tcp://h:1,weight=-1",
            "tcp://h:1,reach=fast",
            "tcp://h:1,speed=2",
            "tcp://h:1,max",
        ] {
            assert!(bad.parse::<EngineSpec>().is_err(), "{bad} was accepted");
        }
        // The message names the option as it was given, not the environment variable.
        let e = "tcp://h:1,reach=fast".parse::<EngineSpec>().unwrap_err();
        assert!(e.contains("reach=\"fast\": expected reach=direct"), "{e}");
        let file: crate::config::FileConfig = toml::from_str(
            "[[engines]]\nurl = \"tcp://a:1\"\nmax_desktops = 2\n[[engines]]\nurl = \"tcp://b:1\"\nreach = \"tunnels\"\n",
        )
        .unwrap();
        let engines = file.engines.unwrap();
        assert_eq!(engines[0].max_desktops, Some(2));
        assert_eq!(engines[1].reach, Some(Reach::Tunnels));
        assert_eq!(engines[1].weight, 1.0);
    }

    #[test]
    fn an_engine_on_another_machine_is_reached_through_tunnels() {
        let reach = |h: &str| Reach::for_host(h, None).unwrap();
        assert_eq!(reach("unix:///var/run/docker.sock"), Reach::Direct);
        assert_eq!(reach("tcp://127.0.0.1:2375"), Reach::Direct);
        assert_eq!(reach("tcp://localhost:2376"), Reach::Direct);
        assert_eq!(reach("tcp://[::1]:2375"), Reach::Direct);
        assert_eq!(reach("tcp://10.0.0.7:2376"), Reach::Tunnels);
        assert_eq!(reach("tcp://127.0.0.1.evil.example:2376"), Reach::Tunnels);
        assert_eq!(reach("ssh://me@build-box"), Reach::Tunnels);
        assert_eq!(reach("ssh://me@localhost"), Reach::Tunnels);
        assert_eq!(
            Reach::for_host("tcp://10.0.0.7:2376", Some("direct")),
            Ok(Reach::Direct)
        );
        assert_eq!(
            Reach::for_host("unix:///x.sock", Some("tunnels")),
            Ok(Reach::Tunnels)
        );
        assert!(Reach::for_host("unix:///x.sock", Some("fast")).is_err());
    }

    #[test]
    fn secrets_are_random_and_hidden_from_debug() {
        let a = Secrets::random();
        let b = Secrets::random();
        assert_ne!(a.vnc_password, b.vnc_password);
        assert_eq!(a.vnc_password.len(), 8);
        assert_eq!(a.cookie_bytes().len(), 16);
        assert_eq!(a.view_token.len(), 32);
        let shown = format!("{a:?}");
        for secret in a.values() {
            assert!(!shown.contains(secret));
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(SandboxSpec::default().validate().is_ok());
        let bad = SandboxSpec {
            width: 10,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = SandboxSpec {
            name: Some("a b".into()),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(180), "3m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(200_000), "2d");
    }
}
