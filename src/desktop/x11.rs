//! The X11 facts VNC does not carry: windows, the active window, the pointer, the window
//! manager.
//!
//! One x11rb connection per desktop over the X server's loopback-published TCP port,
//! authenticated with the container's MIT-MAGIC-COOKIE-1. A watcher thread listens for
//! property changes on the root window (`_NET_CLIENT_LIST`, `_NET_ACTIVE_WINDOW`, the window
//! manager check) and on every client window (titles, classes), and bumps a counter on a
//! `watch` channel. Waiting for a window is then an await on that channel, not a poll loop.
//!
//! x11rb's `RustConnection` is blocking and thread-safe; requests run on the blocking pool.

use serde::Serialize;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ChangeWindowAttributesAux, ClientMessageEvent, ConnectionExt as _, CreateWindowAux,
    EventMask, Window as XWindow, WindowClass,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::{DefaultStream, RustConnection};
use x11rb::wrapper::ConnectionExt as _;

x11rb::atom_manager! {
    pub Atoms: AtomsCookie {
        _NET_CLIENT_LIST,
        _NET_ACTIVE_WINDOW,
        _NET_SUPPORTING_WM_CHECK,
        _NET_WM_NAME,
        _NET_WM_PID,
        _NET_WM_STATE,
        _NET_WM_STATE_HIDDEN,
        _NET_WM_WINDOW_TYPE,
        _NET_CLOSE_WINDOW,
        UTF8_STRING,
        _XROOTPMAP_ID,
        SELFAGENT_WAKE,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum X11Error {
    #[error("connecting to the X server at {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("X11 request failed: {0}")]
    Request(String),
    #[error("the X11 connection is closed")]
    Closed,
}

impl From<x11rb::errors::ConnectionError> for X11Error {
    fn from(e: x11rb::errors::ConnectionError) -> Self {
        Self::Request(e.to_string())
    }
}

impl From<x11rb::errors::ReplyOrIdError> for X11Error {
    fn from(e: x11rb::errors::ReplyOrIdError) -> Self {
        Self::Request(e.to_string())
    }
}

impl From<x11rb::errors::ReplyError> for X11Error {
    fn from(e: x11rb::errors::ReplyError) -> Self {
        Self::Request(e.to_string())
    }
}

/// A top-level window as the window manager lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Window {
    pub id: u32,
    pub title: String,
    /// WM_CLASS class part (`Firefox-esr`, `Xfce4-terminal`).
    pub class: String,
    /// WM_CLASS instance part (`Navigator`, `xfce4-terminal`).
    pub instance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    pub active: bool,
    pub hidden: bool,
}

pub struct X11 {
    conn: Arc<RustConnection>,
    root: XWindow,
    wake_window: XWindow,
    atoms: Atoms,
    changes: watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
}

impl X11 {
    /// Connects with the cookie and starts the watcher thread.
    pub async fn connect(addr: SocketAddr, cookie: Vec<u8>) -> Result<Self, X11Error> {
        tokio::task::spawn_blocking(move || Self::connect_blocking(addr, cookie))
            .await
            .map_err(|e| X11Error::Request(e.to_string()))?
    }

    fn connect_blocking(addr: SocketAddr, cookie: Vec<u8>) -> Result<Self, X11Error> {
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| X11Error::Connect { addr, error: e };
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| err(e.into()))?;
        tcp.set_nodelay(true).map_err(|e| err(e.into()))?;
        let (stream, _) = DefaultStream::from_tcp_stream(tcp).map_err(|e| err(e.into()))?;
        let conn = RustConnection::connect_to_stream_with_auth_info(
            stream,
            0,
            b"MIT-MAGIC-COOKIE-1".to_vec(),
            cookie,
        )
        .map_err(|e| err(e.into()))?;
        let root = conn.setup().roots[0].root;
        let atoms = Atoms::new(&conn)?.reply()?;
        conn.change_window_attributes(
            root,
            &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?
        .check()?;
        // An unmapped window of our own: a ClientMessage to it wakes the watcher on drop.
        let wake_window = conn.generate_id()?;
        conn.create_window(
            0,
            wake_window,
            root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new(),
        )?
        .check()?;
        let conn = Arc::new(conn);
        let (tx, rx) = watch::channel(0u64);
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = Watcher {
            conn: conn.clone(),
            root,
            atoms,
            tx,
            stop: stop.clone(),
            watched: HashSet::new(),
        };
        std::thread::Builder::new()
            .name("selfagent-x11".into())
            .spawn(move || watcher.run())
            .map_err(|e| X11Error::Request(e.to_string()))?;
        Ok(Self {
            conn,
            root,
            wake_window,
            atoms,
            changes: rx,
            stop,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RustConnection, XWindow, &Atoms) -> Result<T, X11Error> + Send + 'static,
    ) -> Result<T, X11Error> {
        let conn = self.conn.clone();
        let (root, atoms) = (self.root, self.atoms);
        tokio::task::spawn_blocking(move || f(&conn, root, &atoms))
            .await
            .map_err(|e| X11Error::Request(e.to_string()))?
    }

    /// A receiver that changes whenever windows, titles or focus change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether a window manager has announced itself (EWMH `_NET_SUPPORTING_WM_CHECK`).
    pub async fn window_manager_running(&self) -> Result<bool, X11Error> {
        self.blocking(|conn, root, atoms| {
            let Some(check) = window_prop(conn, root, atoms._NET_SUPPORTING_WM_CHECK)? else {
                return Ok(false);
            };
            // The check window must exist and point at itself.
            Ok(window_prop(conn, check, atoms._NET_SUPPORTING_WM_CHECK)? == Some(check))
        })
        .await
    }

    /// Whether a backdrop has been drawn (`_XROOTPMAP_ID` on the root window, set by
    /// xfdesktop and other backdrop setters).
    pub async fn backdrop_drawn(&self) -> Result<bool, X11Error> {
        self.blocking(|conn, root, atoms| {
            let reply = conn
                .get_property(false, root, atoms._XROOTPMAP_ID, AtomEnum::ANY, 0, 1)?
                .reply()?;
            Ok(reply.value_len > 0)
        })
        .await
    }

    /// The window manager's client list with titles, classes and geometry.
    pub async fn windows(&self) -> Result<Vec<Window>, X11Error> {
        self.blocking(list_windows).await
    }

    /// The pointer position on the screen.
    pub async fn pointer(&self) -> Result<(i32, i32), X11Error> {
        self.blocking(|conn, root, _| {
            let reply = conn.query_pointer(root)?.reply()?;
            Ok((i32::from(reply.root_x), i32::from(reply.root_y)))
        })
        .await
    }

    /// Waits (up to `timeout`) until the X server has the pointer at `(x, y)`: input sent
    /// over VNC is applied in the server's next cycle. Returns whether it got there.
    pub async fn wait_pointer_at(
        &self,
        x: i32,
        y: i32,
        timeout: Duration,
    ) -> Result<bool, X11Error> {
        self.blocking(move |conn, root, _| {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let r = conn.query_pointer(root)?.reply()?;
                if (i32::from(r.root_x), i32::from(r.root_y)) == (x, y) {
                    return Ok(true);
                }
                if std::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
        .await
    }

    /// Asks the window manager to activate (raise and focus) a window, as `wmctrl -a` does.
    pub async fn activate(&self, window: u32) -> Result<(), X11Error> {
        self.client_message(window, "_NET_ACTIVE_WINDOW", [2, 0, 0, 0, 0])
            .await
    }

    /// Asks the window manager to close a window politely.
    pub async fn close(&self, window: u32) -> Result<(), X11Error> {
        self.client_message(window, "_NET_CLOSE_WINDOW", [0, 2, 0, 0, 0])
            .await
    }

    async fn client_message(
        &self,
        window: u32,
        which: &'static str,
        data: [u32; 5],
    ) -> Result<(), X11Error> {
        self.blocking(move |conn, root, atoms| {
            let atom = match which {
                "_NET_ACTIVE_WINDOW" => atoms._NET_ACTIVE_WINDOW,
                _ => atoms._NET_CLOSE_WINDOW,
            };
            let event = ClientMessageEvent::new(32, window, atom, data);
            conn.send_event(
                false,
                root,
                EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
                event,
            )?
            .check()?;
            Ok(())
        })
        .await
    }

    /// Presses and releases X button `button` (8: back, 9: forward) at `(x, y)` through
    /// XTEST; the RFB pointer message has no bits for these buttons.
    pub async fn click_button(
        &self,
        button: u8,
        x: i16,
        y: i16,
        count: u8,
    ) -> Result<(), X11Error> {
        self.blocking(move |conn, root, _| {
            const MOTION: u8 = 6;
            const PRESS: u8 = 4;
            const RELEASE: u8 = 5;
            conn.xtest_fake_input(MOTION, 0, 0, root, x, y, 0)?;
            for _ in 0..count {
                conn.xtest_fake_input(PRESS, button, 0, root, 0, 0, 0)?;
                conn.xtest_fake_input(RELEASE, button, 0, root, 0, 0, 0)?;
            }
            conn.sync()?;
            Ok(())
        })
        .await
    }
}

impl Drop for X11 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let event =
            ClientMessageEvent::new(32, self.wake_window, self.atoms.SELFAGENT_WAKE, [0; 5]);
        let _ = self
            .conn
            .send_event(false, self.wake_window, EventMask::NO_EVENT, event);
        let _ = self.conn.flush();
    }
}

struct Watcher {
    conn: Arc<RustConnection>,
    root: XWindow,
    atoms: Atoms,
    tx: watch::Sender<u64>,
    stop: Arc<AtomicBool>,
    watched: HashSet<XWindow>,
}

impl Watcher {
    fn bump(&self) {
        self.tx.send_modify(|n| *n += 1);
    }

    /// Follow property changes (titles) on every client window.
    fn watch_clients(&mut self) {
        let Ok(clients) = client_list(&self.conn, self.root, &self.atoms) else {
            return;
        };
        for w in clients {
            if self.watched.insert(w) {
                let _ = self.conn.change_window_attributes(
                    w,
                    &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
                );
            }
        }
        let _ = self.conn.flush();
    }

    fn run(mut self) {
        self.watch_clients();
        let a = self.atoms;
        loop {
            let event = self.conn.wait_for_event();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            match event {
                Ok(Event::PropertyNotify(e)) => {
                    if e.window == self.root {
                        if e.atom == a._NET_CLIENT_LIST {
                            self.watch_clients();
                            self.bump();
                        } else if e.atom == a._NET_ACTIVE_WINDOW
                            || e.atom == a._NET_SUPPORTING_WM_CHECK
                            || e.atom == a._XROOTPMAP_ID
                        {
                            self.bump();
                        }
                    } else if e.atom == a._NET_WM_NAME
                        || e.atom == u32::from(AtomEnum::WM_NAME)
                        || e.atom == u32::from(AtomEnum::WM_CLASS)
                        || e.atom == a._NET_WM_STATE
                    {
                        self.bump();
                    }
                }
                Ok(Event::DestroyNotify(e)) => {
                    self.watched.remove(&e.window);
                }
                Ok(_) => {}
                Err(_) => {
                    // Connection gone: wake every waiter one last time.
                    self.bump();
                    return;
                }
            }
        }
    }
}

fn window_prop(conn: &RustConnection, w: XWindow, prop: u32) -> Result<Option<u32>, X11Error> {
    let reply = conn
        .get_property(false, w, prop, AtomEnum::WINDOW, 0, 1)?
        .reply();
    match reply {
        Ok(r) => Ok(r.value32().and_then(|mut v| v.next())),
        // The window may be gone by the time we ask.
        Err(x11rb::errors::ReplyError::X11Error(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn client_list(
    conn: &RustConnection,
    root: XWindow,
    atoms: &Atoms,
) -> Result<Vec<XWindow>, X11Error> {
    let reply = conn
        .get_property(
            false,
            root,
            atoms._NET_CLIENT_LIST,
            AtomEnum::WINDOW,
            0,
            4096,
        )?
        .reply()?;
    Ok(reply.value32().map(Iterator::collect).unwrap_or_default())
}

fn list_windows(
    conn: &RustConnection,
    root: XWindow,
    atoms: &Atoms,
) -> Result<Vec<Window>, X11Error> {
    let clients = client_list(conn, root, atoms)?;
    let active = window_prop(conn, root, atoms._NET_ACTIVE_WINDOW)?;
    // Pipeline every request, then collect the replies: one round trip for the lot.
    let mut pending = Vec::with_capacity(clients.len());
    for &w in &clients {
        pending.push((
            w,
            conn.get_property(false, w, atoms._NET_WM_NAME, atoms.UTF8_STRING, 0, 1024)?,
            conn.get_property(false, w, AtomEnum::WM_NAME, AtomEnum::ANY, 0, 1024)?,
            conn.get_property(false, w, AtomEnum::WM_CLASS, AtomEnum::STRING, 0, 1024)?,
            conn.get_property(false, w, atoms._NET_WM_PID, AtomEnum::CARDINAL, 0, 1)?,
            conn.get_property(false, w, atoms._NET_WM_STATE, AtomEnum::ATOM, 0, 64)?,
            conn.get_geometry(w)?,
            conn.translate_coordinates(w, root, 0, 0)?,
        ));
    }
    let mut out = Vec::with_capacity(pending.len());
    for (w, net_name, name, class, pid, state, geom, pos) in pending {
        // A window that vanished between the list and the replies is skipped.
        let (Ok(net_name), Ok(name), Ok(class), Ok(pid), Ok(state), Ok(geom), Ok(pos)) = (
            net_name.reply(),
            name.reply(),
            class.reply(),
            pid.reply(),
            state.reply(),
            geom.reply(),
            pos.reply(),
        ) else {
            continue;
        };
        let title = if net_name.value.is_empty() {
            String::from_utf8_lossy(&name.value).into_owned()
        } else {
            String::from_utf8_lossy(&net_name.value).into_owned()
        };
        let mut parts = class
            .value
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let instance = parts.next().unwrap_or_default();
        let class = parts.next().unwrap_or_default();
        let hidden = state
            .value32()
            .is_some_and(|mut v| v.any(|a| a == atoms._NET_WM_STATE_HIDDEN));
        out.push(Window {
            id: w,
            title,
            class,
            instance,
            pid: pid.value32().and_then(|mut v| v.next()),
            x: i32::from(pos.dst_x),
            y: i32::from(pos.dst_y),
            width: u32::from(geom.width),
            height: u32::from(geom.height),
            active: Some(w) == active,
            hidden,
        });
    }
    Ok(out)
}
