//! `selfagent mcp`: selfagent's desktops as tools of the Model Context Protocol, for the
//! hosts that bring their own loop (Claude Code, Claude Desktop, Codex, Cursor, agent SDKs).
//!
//! - [`Hub`] is the server's state, shared by every connection: the desktops it holds (made
//!   by it, or attached by id), the limit on how many it makes, the idle reaper, and each
//!   desktop's recording. Every `computer` call is one step of an MCP session in the
//!   recording (source `mcp`), so a host-driven episode replays, grades and exports like any
//!   other.
//! - [`Handler`] is one connection's view of it (the stdio channel, or one HTTP session):
//!   the MCP methods (tools in `tools.rs`, resources in `resources.rs`). A connection that
//!   ends takes the desktops it made with it, unless they were made to persist.
//! - The wire is the official Rust SDK's (`rmcp`): stdio, or streamable HTTP behind a bearer
//!   token. Clients on the 2026-07-28 protocol have no sessions over HTTP: what they make
//!   lives until `sandbox_down`, the idle timeout or the server's end.
//!
//! Nothing here writes to stdout: over stdio it is the protocol's channel.

mod desk;
mod resources;
mod tools;

pub use desk::Desk;

use crate::config::FileConfig;
use crate::sandbox::Engine;
use crate::settings::CommonArgs;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The server's settings (`selfagent mcp`'s flags).
pub struct Options {
    /// Defaults for new desktops (size, image, network) and for `run_task` (model, endpoint,
    /// protocol, limits), as `run` takes them.
    pub defaults: CommonArgs,
    pub file: FileConfig,
    /// Desktops this server makes at most at once (over all its connections).
    pub max_desktops: usize,
    /// A desktop nobody used for this long is removed (made here) or let go (attached).
    pub idle_timeout: Duration,
    /// The recording.
    pub db: PathBuf,
}

/// Who made a desktop's lifetime: the connection whose end removes it, if any.
pub type ConnId = u64;

/// The server's state, shared by all its connections.
pub struct Hub {
    engine: Engine,
    opts: Options,
    desks: Mutex<Desks>,
    next_conn: AtomicU64,
    /// Releases under way in tasks of their own (a connection that ended): the server's
    /// end waits for them, so no desktop is left half released.
    releasing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Desks {
    by_id: HashMap<String, Arc<Desk>>,
    /// Desktops being made (counted against the limit before they exist).
    making: usize,
}

impl Desks {
    fn made_here(&self) -> usize {
        self.by_id.values().filter(|d| d.made_here).count() + self.making
    }
}

/// A place among the server's desktops, held while one is being made; freed on drop.
pub(crate) struct Slot<'a>(&'a Hub);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut d) = self.0.desks.lock() {
            d.making = d.making.saturating_sub(1);
        }
    }
}

impl Hub {
    pub fn new(engine: Engine, opts: Options) -> Arc<Self> {
        Arc::new(Self {
            engine,
            opts,
            desks: Mutex::new(Desks::default()),
            next_conn: AtomicU64::new(1),
            releasing: Mutex::new(Vec::new()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn desks(&self) -> std::sync::MutexGuard<'_, Desks> {
        // A panic while the map was held leaves it as it was: keep serving.
        self.desks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for one more desktop, or why there is none.
    pub(crate) fn reserve(&self) -> Result<Slot<'_>, String> {
        let mut d = self.desks();
        if d.made_here() >= self.opts.max_desktops {
            return Err(format!(
                "this server already has {} desktops, its limit (--max-desktops {}): close one with sandbox_down first",
                d.made_here(),
                self.opts.max_desktops
            ));
        }
        d.making += 1;
        Ok(Slot(self))
    }

    pub(crate) fn insert(&self, desk: Arc<Desk>) {
        self.desks()
            .by_id
            .insert(desk.sandbox.id().to_owned(), desk);
    }

    /// The held desktop `key` names: its id, a unique id prefix, or its name.
    pub(crate) fn find(&self, key: &str) -> Option<Arc<Desk>> {
        let d = self.desks();
        if let Some(desk) = d.by_id.get(key) {
            return Some(desk.clone());
        }
        let mut hits = d.by_id.values().filter(|x| {
            x.sandbox.name() == key || (key.len() >= 4 && x.sandbox.id().starts_with(key))
        });
        match (hits.next(), hits.next()) {
            (Some(one), None) => Some(one.clone()),
            _ => None,
        }
    }

    pub(crate) fn all(&self) -> Vec<Arc<Desk>> {
        let mut list: Vec<_> = self.desks().by_id.values().cloned().collect();
        list.sort_by_key(|d| d.since);
        list
    }

    /// Takes a desktop out of the server's hands (the caller then releases it); `None` when
    /// it was taken already.
    pub(crate) fn take(&self, id: &str) -> Option<Arc<Desk>> {
        self.desks().by_id.remove(id)
    }

    fn new_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A connection ended: the desktops it made go (but those made to persist), those it
    /// attached are let go.
    pub async fn end_connection(&self, conn: ConnId) {
        let ids: Vec<String> = self
            .desks()
            .by_id
            .values()
            .filter(|d| d.owner == Some(conn))
            .map(|d| d.sandbox.id().to_owned())
            .collect();
        for id in ids {
            if let Some(desk) = self.take(&id) {
                desk.release(desk::Ending::ConnectionClosed).await;
            }
        }
    }

    /// Ends a connection in a task of its own (from a `Drop`), tracked for [`Hub::shutdown`].
    fn end_connection_later(self: &Arc<Self>, conn: ConnId) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.clone();
        let task = rt.spawn(async move { hub.end_connection(conn).await });
        let mut tasks = self.releasing.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// The server stops: every desktop it holds is released, and releases under way are
    /// waited for.
    pub async fn shutdown(&self) {
        let all: Vec<String> = self.desks().by_id.keys().cloned().collect();
        for id in all {
            if let Some(desk) = self.take(&id) {
                desk.release(desk::Ending::ServerStopped).await;
            }
        }
        let tasks = std::mem::take(&mut *self.releasing.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Releases the desktops idle past the timeout; runs until the hub is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        let period =
            (self.opts.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(15));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(hub) = hub.upgrade() else { return };
                let idle: Vec<String> = hub
                    .desks()
                    .by_id
                    .values()
                    .filter(|d| d.idle_for() >= hub.opts.idle_timeout)
                    .map(|d| d.sandbox.id().to_owned())
                    .collect();
                for id in idle {
                    if let Some(desk) = hub.take(&id) {
                        tracing::info!(
                            "desktop {} idle for {:.0} s: released",
                            desk.sandbox.short_id(),
                            desk.idle_for().as_secs_f64()
                        );
                        desk.release(desk::Ending::Idle).await;
                    }
                }
            }
        });
    }
}

/// How a connection reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stdio,
    Http,
}

/// Ends a connection when its handler goes (an HTTP session closed or expired).
struct ConnGuard {
    hub: Arc<Hub>,
    id: ConnId,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.hub.end_connection_later(self.id);
    }
}

/// One connection's MCP server.
#[derive(Clone)]
pub struct Handler {
    hub: Arc<Hub>,
    transport: Transport,
    conn: Arc<ConnGuard>,
}

impl Handler {
    pub fn new(hub: Arc<Hub>, transport: Transport) -> Self {
        let id = hub.new_conn();
        Self {
            conn: Arc::new(ConnGuard {
                hub: hub.clone(),
                id,
            }),
            hub,
            transport,
        }
    }

    pub fn conn(&self) -> ConnId {
        self.conn.id
    }

    /// The connection a desktop made by this request belongs to: stdio's, or an HTTP
    /// session's; `None` for a stateless HTTP request (2026-07-28 clients), whose desktops
    /// live until `sandbox_down`, the idle timeout or the server's end.
    fn owner(&self, ctx: &RequestContext<RoleServer>) -> Option<ConnId> {
        match self.transport {
            Transport::Stdio => Some(self.conn.id),
            Transport::Http => ctx
                .extensions
                .get::<axum::http::request::Parts>()
                .and_then(|p| p.headers.get("mcp-session-id"))
                .map(|_| self.conn.id),
        }
    }
}

const INSTRUCTIONS: &str = "Desktops (Linux, X11, 1280x800 by default) to use a computer on. \
Open one with sandbox_up; look with screenshot; act with computer (Anthropic's computer-tool \
actions, coordinates in screen pixels, one action per call; pass screenshot=true to see the \
result); run commands with exec; move files with read_file and write_file; close it with \
sandbox_down. run_task hands a whole task to selfagent's own agent loop. Every computer call \
is recorded (resources selfagent://sessions).";

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(
            Implementation::new("selfagent", env!("CARGO_PKG_VERSION"))
                .with_title("selfagent desktops"),
        )
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let owner = self.owner(&ctx);
        Ok(tools::call(&self.hub, owner, request, ctx).await.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(resources::list(
            &self.hub,
        )))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let hub = self.hub.clone();
        let uri = request.uri.clone();
        // SQLite reads block: off the runtime's threads.
        tokio::task::spawn_blocking(move || resources::read(&hub, &uri))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
            .map(Into::into)
    }
}

/// Seconds to a tenth, for people and models.
pub(crate) fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Serves one connection over stdin and stdout until the client closes it (or a stop
/// signal); then every desktop the server made goes, but those made to persist.
pub async fn serve_stdio(hub: Arc<Hub>) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    hub.spawn_reaper();
    let handler = Handler::new(hub.clone(), Transport::Stdio);
    let conn = handler.conn();
    let mut signals = crate::signals::StopSignals::new();
    let outcome = async {
        let service = handler.serve(rmcp::transport::stdio()).await?;
        tokio::select! {
            r = service.waiting() => { r?; }
            name = signals.recv() => tracing::info!("{name}: stopping"),
        }
        anyhow::Ok(())
    }
    .await;
    hub.end_connection(conn).await;
    hub.shutdown().await;
    outcome
}

/// Where and how `serve_http` listens.
pub struct Http {
    pub listener: tokio::net::TcpListener,
    /// The bearer token every request must carry.
    pub token: String,
    /// Accept any Host header (a non-loopback address, `--listen`): the token still guards.
    pub any_host: bool,
}

/// Serves streamable HTTP at `/mcp` until a stop signal. Each HTTP session is a connection
/// (its desktops go when it is deleted or idle past the timeout); requests of clients on the
/// 2026-07-28 protocol have no session.
pub async fn serve_http(hub: Arc<Hub>, http: Http) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    hub.spawn_reaper();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(hub.opts.idle_timeout);
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    if http.any_host {
        config = config.disable_allowed_hosts();
    }
    let h = hub.clone();
    let service = StreamableHttpService::new(
        move || Ok(Handler::new(h.clone(), Transport::Http)),
        Arc::new(sessions),
        config,
    );
    let token = Arc::new(http.token);
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(move |req, next| {
            bearer(token.clone(), req, next)
        }));
    let mut signals = crate::signals::StopSignals::new();
    let stopping = stop.clone();
    let served = axum::serve(http.listener, app)
        .with_graceful_shutdown(async move {
            let name = signals.recv().await;
            tracing::info!("{name}: stopping");
            stopping.cancel();
        })
        .await;
    stop.cancel();
    hub.shutdown().await;
    served.map_err(Into::into)
}

/// Lets a request through only with `Authorization: Bearer <token>` (compared in constant
/// time); anything else is a 401.
async fn bearer(
    token: Arc<String>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if crate::text::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return next.run(req).await;
    }
    (
        axum::http::StatusCode::UNAUTHORIZED,
        [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
        "selfagent mcp: a bearer token is needed (Authorization: Bearer <token>, printed when the server started)\n",
    )
        .into_response()
}

/// A new bearer token: 32 random bytes, hex.
pub fn new_token() -> String {
    crate::text::random_hex(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
    }
}
