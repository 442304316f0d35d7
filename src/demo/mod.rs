//! Demonstrations: a person drives the desktop and every gesture is recorded as the step a
//! model would have taken (`selfagent demo`).
//!
//! A proxy listens on loopback in front of the desktop's VNC server: a VNC client connects
//! to it with the demonstration's own password ([`rfb`]), or a browser through noVNC over a
//! WebSocket with the demonstration's token ([`ws`]). The proxy authenticates to the desktop
//! with the desktop's password (which the person never sees), passes the server's bytes
//! through untouched and reads the client's messages as it passes them on. Key and pointer
//! events go to a [`gesture::Recognizer`], which turns them into clicks, drags, scrolls, key
//! combinations and typed text.
//!
//! Each step's before-screenshot is taken from the recording's own VNC connection when its
//! gesture begins, before the first input of it is passed on (the proxy waits for it, a
//! copy of the framebuffer: about a millisecond); its after-screenshot when the screen has
//! settled after the gesture, or when the next gesture begins, whichever comes first. Steps
//! are written by the episode's one recorder, as a model's are, marked `source: human`.

pub mod gesture;
pub mod rfb;
pub mod ws;

use crate::action::Action;
use crate::desktop::{Desktop, Mark, Screenshot, SettleOptions, SettleReport};
use crate::event::{Emitter, EndedBy, Event, Frame, Outcome, Status};
use gesture::{Input, Out, Recognizer, Timing};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The `source` of demonstration sessions, and the mark of a person's steps.
pub const SOURCE: &str = "human";

/// A demonstration's proxy, bound before the desktop starts (its address is printed first).
pub struct Demo {
    pub listener: TcpListener,
    /// What VNC clients authenticate with (VNC uses 8 characters).
    pub password: String,
    /// What the browser view's WebSocket must carry.
    pub token: String,
    /// End when the last client disconnects (after one has connected).
    pub until_disconnect: bool,
    pub timing: Timing,
}

impl Demo {
    /// Binds the proxy at `addr` with fresh credentials.
    pub async fn bind(addr: SocketAddr, until_disconnect: bool) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            password: crate::text::random_hex(4),
            token: crate::text::random_hex(16),
            until_disconnect,
            timing: Timing::default(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// How people reach it (cheap to clone, for whoever prints it).
    pub fn link(&self) -> Link {
        Link {
            addr: self.addr(),
            password: self.password.clone(),
            token: self.token.clone(),
        }
    }
}

/// Where a demonstration's proxy listens, and its credentials.
#[derive(Debug, Clone)]
pub struct Link {
    pub addr: SocketAddr,
    pub password: String,
    pub token: String,
}

impl Link {
    /// The desktop's own noVNC page, told to connect to this proxy instead of the desktop's
    /// view: what a browser opens to demonstrate. `None` for a desktop without a view.
    pub fn view_url(&self, sandbox: &crate::sandbox::Sandbox) -> Option<String> {
        let view = sandbox.view_address()?;
        Some(format!(
            "http://{view}/vnc.html?token={}&host={}&port={}&path=websockify%3Ftoken%3D{}&autoconnect=1&resize=scale&reconnect=1&password={}",
            sandbox.secrets().view_token,
            self.addr.ip(),
            self.addr.port(),
            self.token,
            self.password
        ))
    }
}

/// How long a new connection may stay silent and still turn out to be a browser's.
const PROTOCOL_SNIFF: Duration = Duration::from_millis(300);

/// What the connections tell the recording.
enum Note {
    /// A gesture begins: capture the screen, then let the connection go on.
    Begin(oneshot::Sender<()>),
    Done(Action, Instant),
    Connected(SocketAddr),
    Disconnected(SocketAddr, Option<String>),
}

/// The screen as a gesture began.
struct Capture {
    rgb: Vec<u8>,
    width: u32,
    height: u32,
    generation: u64,
    mark: Mark,
    at: Instant,
}

/// A step whose action is done, waiting for its after-screenshot.
struct Awaiting {
    step: u32,
    started: Instant,
}

/// How a demonstration is told to end: `None` when the person is done (Ctrl-C, `q`, hand
/// back), `Some(why)` when the harness must stop it (the recording failed).
pub type Stop<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>>;

/// What a person did, and why it ended.
pub struct Demonstrated {
    /// The steps' actions, in order.
    pub actions: Vec<Action>,
    pub ended_by: EndedBy,
    pub error: Option<String>,
}

/// Records a demonstration on `desktop` and ends the episode with it: [`record`], then
/// [`Event::Finished`].
pub async fn drive(demo: &Demo, desktop: &Desktop, emit: &Emitter, stop: Stop<'_>) -> Outcome {
    let started = Instant::now();
    let done = record(demo, desktop, emit, stop, 1).await;
    let outcome = Outcome {
        status: match done.ended_by {
            EndedBy::Demonstrator => Status::Succeeded,
            _ => Status::Error,
        },
        ended_by: done.ended_by,
        answer: None,
        error: done.error,
        steps: done.actions.len() as u32,
        tokens_in: 0,
        tokens_out: 0,
        wall_ms: started.elapsed().as_millis() as u64,
        cost: None,
    };
    emit.emit(Event::Finished(outcome.clone())).await;
    outcome
}

/// Records what a person does on `desktop` through the proxy until `stop` resolves or, with
/// `until_disconnect`, the last client leaves; steps are numbered from `first_step`.
pub async fn record(
    demo: &Demo,
    desktop: &Desktop,
    emit: &Emitter,
    mut stop: Stop<'_>,
    first_step: u32,
) -> Demonstrated {
    let (tx, mut rx) = mpsc::unbounded_channel::<Note>();
    let recognizer = Arc::new(Mutex::new(Recognizer::new(demo.timing)));
    let mut rec = HumanSteps::new(desktop, emit, first_step);
    let mut connections = tokio::task::JoinSet::new();
    let (mut clients, mut ever) = (0usize, false);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let upstream = desktop.sandbox().endpoints().await.map(|e| e.vnc);
    let (ended_by, error) = loop {
        tokio::select! {
            why = &mut stop => match why {
                None => break (EndedBy::Demonstrator, None),
                Some(why) => break (EndedBy::Recording, Some(why)),
            },
            () = desktop.gone() => break (EndedBy::Harness, Some(format!(
                "the desktop stopped: {}",
                desktop.ensure_open().err().map(|e| e.to_string()).unwrap_or_default()
            ))),
            accepted = demo.listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Ok(upstream) = upstream.as_ref() else {
                    tracing::warn!("a demonstration client, but the desktop has no VNC address");
                    continue;
                };
                connections.spawn(serve(
                    stream,
                    peer,
                    *upstream,
                    desktop.sandbox().secrets().vnc_password.clone(),
                    demo.password.clone(),
                    demo.token.clone(),
                    recognizer.clone(),
                    tx.clone(),
                ));
            }
            note = rx.recv() => match note {
                Some(Note::Begin(ack)) => rec.begin(ack).await,
                Some(Note::Done(action, at)) => rec.done(action, at).await,
                Some(Note::Connected(peer)) => {
                    clients += 1;
                    ever = true;
                    tracing::info!(%peer, "a demonstration client connected");
                }
                Some(Note::Disconnected(peer, why)) => {
                    clients = clients.saturating_sub(1);
                    match why {
                        Some(why) => tracing::warn!(%peer, "a demonstration client left: {why}"),
                        None => tracing::info!(%peer, "a demonstration client left"),
                    }
                    if demo.until_disconnect && ever && clients == 0 {
                        break (EndedBy::Demonstrator, None);
                    }
                }
                None => {}
            },
            report = rec.settled() => rec.after(Some(report)).await,
            _ = ticker.tick() => {
                if let Ok(mut r) = recognizer.lock() {
                    for out in r.tick(Instant::now()) {
                        send(&tx, out);
                    }
                }
            }
        }
    };
    // No more input: what is open ends where it is, and its screen is taken once it settles.
    connections.abort_all();
    if let Ok(mut r) = recognizer.lock() {
        for out in r.flush() {
            send(&tx, out);
        }
    }
    drop(tx);
    while let Some(note) = rx.recv().await {
        match note {
            Note::Begin(ack) => rec.begin(ack).await,
            Note::Done(action, at) => rec.done(action, at).await,
            Note::Connected(_) | Note::Disconnected(..) => {}
        }
    }
    if rec.awaiting.is_some() {
        let report = rec.settled().await;
        rec.after(Some(report)).await;
    }
    Demonstrated {
        actions: rec.actions,
        ended_by,
        error,
    }
}

fn send(tx: &mpsc::UnboundedSender<Note>, out: Out) {
    let note = match out {
        Out::Begin => {
            // Only connections wait for a capture; a begin from a tick never happens.
            return;
        }
        Out::Done(action) => Note::Done(action, Instant::now()),
    };
    let _ = tx.send(note);
}

/// A person's steps as they are recorded: the before-screenshot of the gesture under way,
/// and the step waiting for its after-screenshot.
struct HumanSteps<'a> {
    desktop: &'a Desktop,
    emit: &'a Emitter,
    next: u32,
    actions: Vec<Action>,
    before: Option<Capture>,
    awaiting: Option<Awaiting>,
    settling:
        Option<std::pin::Pin<Box<dyn std::future::Future<Output = SettleReport> + Send + 'a>>>,
}

impl<'a> HumanSteps<'a> {
    fn new(desktop: &'a Desktop, emit: &'a Emitter, first_step: u32) -> Self {
        Self {
            desktop,
            emit,
            next: first_step.max(1),
            actions: Vec::new(),
            before: None,
            awaiting: None,
            settling: None,
        }
    }

    fn capture(&self) -> Option<Capture> {
        let mark = self.desktop.mark();
        let (width, height, rgb) = self.desktop.frame_rgb().ok()?;
        Some(Capture {
            rgb,
            width,
            height,
            generation: mark.stamp.generation,
            mark,
            at: Instant::now(),
        })
    }

    /// A gesture begins: the screen now is its before-screenshot, and the after-screenshot
    /// of a step still settling. The connection goes on once it is copied.
    async fn begin(&mut self, ack: oneshot::Sender<()>) {
        let capture = self.capture();
        let _ = ack.send(());
        if self.awaiting.is_some()
            && let Some(c) = &capture
        {
            let shot = encode(c).await;
            self.finish(shot, None).await;
        }
        self.before = capture;
    }

    /// The gesture is a step: it is recorded with its before-screenshot, and settles.
    async fn done(&mut self, action: Action, at: Instant) {
        if self.awaiting.is_some() {
            // A step still settling when a gesture ends without having begun (cannot happen
            // with the recognizer's order, but a step is never lost): its screen is now.
            let shot = self.desktop.screenshot().await.ok();
            self.finish(shot, None).await;
        }
        let step = self.next;
        self.next += 1;
        let before = match self.before.take() {
            Some(c) => c,
            None => match self.capture() {
                Some(c) => c,
                None => return,
            },
        };
        let shot = encode(&before).await;
        self.emit.emit(Event::StepStarted { step }).await;
        if let Some(shot) = &shot {
            self.emit
                .emit(Event::Observation {
                    step,
                    frame: Frame::new(shot.png.clone(), shot.width, shot.height),
                })
                .await;
        }
        self.emit
            .emit(Event::StepMark {
                step,
                key: "source".into(),
                mark: serde_json::Value::from(SOURCE),
                expected: None,
            })
            .await;
        self.actions.push(action.clone());
        self.emit
            .emit(Event::ActionDone {
                step,
                index: 0,
                action,
                text: None,
                act_ms: at.duration_since(before.at).as_secs_f64() * 1000.0,
                image: None,
            })
            .await;
        self.awaiting = Some(Awaiting {
            step,
            started: before.at,
        });
        let desktop = self.desktop;
        let mark = before.mark;
        self.settling = Some(Box::pin(async move {
            desktop.settle(mark, SettleOptions::default()).await
        }));
    }

    /// Resolves when the step waiting for its after-screenshot has settled (never when none
    /// is waiting).
    async fn settled(&mut self) -> SettleReport {
        match self.settling.as_mut() {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    }

    async fn after(&mut self, report: Option<SettleReport>) {
        let shot = self.desktop.screenshot().await.ok();
        self.finish(shot, report).await;
    }

    async fn finish(&mut self, shot: Option<Screenshot>, report: Option<SettleReport>) {
        self.settling = None;
        let Some(done) = self.awaiting.take() else {
            return;
        };
        if let Some(report) = report {
            self.emit
                .emit(Event::Settled {
                    step: done.step,
                    report,
                })
                .await;
        }
        if let Some(shot) = shot {
            self.emit
                .emit(Event::StepFinished {
                    step: done.step,
                    frame: Frame::new(shot.png.clone(), shot.width, shot.height),
                    step_ms: done.started.elapsed().as_secs_f64() * 1000.0,
                })
                .await;
        }
    }
}

async fn encode(c: &Capture) -> Option<Screenshot> {
    Screenshot::encode(c.width, c.height, c.rgb.clone(), c.generation)
        .await
        .ok()
}

/// One client connection: handshakes both ways, then passes bytes through, reading the
/// client's input on the way.
#[allow(clippy::too_many_arguments)]
async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    desktop_password: String,
    password: String,
    token: String,
    recognizer: Arc<Mutex<Recognizer>>,
    tx: mpsc::UnboundedSender<Note>,
) {
    // A VNC client waits for the server to speak first; a browser sends its request at once.
    // So: whoever has said nothing after a moment is a VNC client.
    let mut first = [0u8; 4];
    let is_http = matches!(
        tokio::time::timeout(PROTOCOL_SNIFF, stream.peek(&mut first)).await,
        Ok(Ok(4)) if &first == b"GET "
    );
    let client: Result<Box<dyn Duplex>, String> = if is_http {
        ws::upgrade(stream, &token)
            .await
            .map(|inner| Box::new(inner) as Box<dyn Duplex>)
    } else {
        Ok(Box::new(stream))
    };
    let result = match client {
        Ok(client) => {
            relay(
                client,
                peer,
                upstream,
                &desktop_password,
                &password,
                &recognizer,
                &tx,
            )
            .await
        }
        Err(e) => Err(e),
    };
    if let Err(why) = result {
        tracing::warn!(%peer, "demonstration connection: {why}");
    }
}

/// A client's byte stream: a TCP connection, or the inside of a WebSocket.
trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

async fn relay(
    mut client: Box<dyn Duplex>,
    peer: SocketAddr,
    upstream: SocketAddr,
    desktop_password: &str,
    password: &str,
    recognizer: &Arc<Mutex<Recognizer>>,
    tx: &mpsc::UnboundedSender<Note>,
) -> Result<(), String> {
    rfb::accept(&mut client, password)
        .await
        .map_err(|e| format!("handshake with the client: {e}"))?;
    let mut server = tokio::net::TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connecting to the desktop: {e}"))?;
    let _ = server.set_nodelay(true);
    let init = rfb::connect(&mut server, desktop_password)
        .await
        .map_err(|e| format!("handshake with the desktop: {e}"))?;
    client
        .write_all(&init)
        .await
        .map_err(|e| format!("to the client: {e}"))?;
    let _ = tx.send(Note::Connected(peer));
    let (mut server_r, mut server_w) = server.into_split();
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let down = tokio::spawn(async move { tokio::io::copy(&mut server_r, &mut client_w).await });
    let result = async {
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = client_r.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            while let Some((len, message)) = rfb::next_message(&buf[at..])? {
                let bytes = &buf[at..at + len];
                match message {
                    rfb::Message::Input(input) => {
                        witness(input, recognizer, tx).await;
                        server_w.write_all(bytes).await.map_err(|e| e.to_string())?;
                    }
                    rfb::Message::Forward => {
                        server_w.write_all(bytes).await.map_err(|e| e.to_string())?;
                    }
                    rfb::Message::Drop => {}
                }
                at += len;
            }
            buf.drain(..at);
        }
    }
    .await;
    down.abort();
    let _ = tx.send(Note::Disconnected(peer, result.as_ref().err().cloned()));
    result
}

/// Shows one input to the recognizer; when it begins a gesture, waits until the recording
/// has the screen as it was before the input is passed on.
async fn witness(
    input: Input,
    recognizer: &Arc<Mutex<Recognizer>>,
    tx: &mpsc::UnboundedSender<Note>,
) {
    let mut wait = None;
    if let Ok(mut r) = recognizer.lock() {
        // Sent under the lock: the recording sees every connection's and tick's notes in
        // the order the recognizer made them.
        for out in r.input(input, Instant::now()) {
            match out {
                Out::Begin => {
                    let (ack, acked) = oneshot::channel();
                    let _ = tx.send(Note::Begin(ack));
                    wait = Some(acked);
                }
                Out::Done(action) => {
                    let _ = tx.send(Note::Done(action, Instant::now()));
                }
            }
        }
    }
    if let Some(acked) = wait {
        let _ = tokio::time::timeout(Duration::from_secs(2), acked).await;
    }
}
