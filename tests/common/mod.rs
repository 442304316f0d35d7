//! Helpers shared by the integration tests: real desktops in real containers, the real
//! `selfagent` binary, and a tiny HTTP client for the view.
//!
//! Every desktop started here is removed when its guard drops, also when a test panics.
//! The desktop image must exist (`selfagent sandbox build`; `.ci/run` builds it).

#![allow(dead_code)]

pub mod model_server;
pub mod screens;
pub mod sdk;
pub mod tmux;
pub mod wait;

use selfagent::action::Action;
use selfagent::desktop::{ConnectOptions, Desktop, SettleOptions, Window, WindowMatch};
use selfagent::sandbox::{Engine, ExecOptions, Sandbox, SandboxSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The `selfagent` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_selfagent")
}

/// Runs the real binary with `args` and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running selfagent")
}

/// Runs the real binary, feeding `stdin`.
pub fn cli_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running selfagent");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A finished command as a failed assertion shows it: its exit code, stdout and stderr.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Removes a container by id with the docker CLI (usable from `Drop`).
pub fn docker_rm(id: &str) {
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A container removed on drop.
pub struct Guard(pub String);

impl Drop for Guard {
    fn drop(&mut self) {
        docker_rm(&self.0);
    }
}

/// Removes, on drop (also when a test panics), the final-state snapshot images of every
/// session recorded in a database: tests clean up what they make.
pub struct SnapshotsOf(pub std::path::PathBuf);

impl Drop for SnapshotsOf {
    fn drop(&mut self) {
        if !self.0.exists() {
            return;
        }
        let Ok(db) = selfagent::record::Db::open(&self.0) else {
            return;
        };
        let images: Vec<String> = db
            .sessions(100_000)
            .unwrap_or_default()
            .iter()
            .map(|s| selfagent::sandbox::snapshot_image(&s.id))
            .collect();
        if images.is_empty() {
            return;
        }
        let _ = Command::new("docker")
            .arg("rmi")
            .arg("-f")
            .args(&images)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running desktop and its sandbox, removed on drop.
pub struct TestDesktop {
    pub sandbox: Sandbox,
    pub desktop: Desktop,
    _guard: Guard,
}

impl std::ops::Deref for TestDesktop {
    type Target = Desktop;
    fn deref(&self) -> &Desktop {
        &self.desktop
    }
}

pub fn test_spec() -> SandboxSpec {
    SandboxSpec {
        ttl: 900,
        owned: true,
        ..Default::default()
    }
}

pub async fn engine() -> Engine {
    let engine = Engine::connect()
        .await
        .expect("the Docker engine must be reachable for these tests");
    assert!(
        engine
            .image_exists(selfagent::sandbox::DEFAULT_IMAGE)
            .await
            .unwrap(),
        "the desktop image is missing: run `selfagent sandbox build` first"
    );
    engine
}

pub async fn desktop() -> TestDesktop {
    desktop_with(test_spec()).await
}

pub async fn desktop_with(spec: SandboxSpec) -> TestDesktop {
    let engine = engine().await;
    let sandbox = engine.create(&spec).await.expect("creating a desktop");
    let guard = Guard(sandbox.id().to_owned());
    let desktop = Desktop::connect(sandbox.clone(), ConnectOptions::default())
        .await
        .expect("desktop ready");
    TestDesktop {
        sandbox,
        desktop,
        _guard: guard,
    }
}

impl TestDesktop {
    /// Runs a shell command in the sandbox; panics unless it succeeds.
    pub async fn sh(&self, script: &str) -> String {
        let out = self
            .sandbox
            .sh(script, &ExecOptions::default())
            .await
            .unwrap();
        assert!(out.success(), "`{script}` failed: {}", out.stderr_text());
        out.stdout_text()
    }

    /// Performs an action and settles.
    pub async fn act_settled(&self, action: Action) {
        let before = self.mark();
        self.act(&action)
            .await
            .unwrap_or_else(|e| panic!("{action:?}: {e}"));
        self.settle(before, SettleOptions::default()).await;
    }

    /// Performs an action that must change the screen: waits (up to 5 s) for the change,
    /// however slow the app is, then settles.
    pub async fn act_changing(&self, action: Action) {
        let before = self.mark();
        self.act(&action)
            .await
            .unwrap_or_else(|e| panic!("{action:?}: {e}"));
        assert!(
            self.wait_for_change(before.stamp, Duration::from_secs(5))
                .await
                .is_some(),
            "{action:?} changed nothing on screen"
        );
        self.settle(before, SettleOptions::default()).await;
    }

    /// Starts a shell command line in the background and waits for a window whose title
    /// matches `title`, then focuses it.
    pub async fn open_window(&self, command: &str, title: &str) -> Window {
        self.sandbox.spawn(command).await.unwrap();
        let m = WindowMatch {
            title: Some(regex::Regex::new(title).unwrap()),
            class: None,
        };
        let w = self.wait_window(&m, Duration::from_secs(30)).await.unwrap();
        let w = self.focus(w.id, Duration::from_secs(5)).await.unwrap();
        // Let the new window paint before anyone types into it.
        self.settle(self.mark(), SettleOptions::default()).await;
        w
    }

    /// A terminal (no menu bar) titled `title` running `command` in a shell.
    pub async fn terminal(&self, title: &str, command: Option<&str>) -> Window {
        let mut line = format!("xfce4-terminal --hide-menubar --hide-toolbar --title {title}");
        if let Some(c) = command {
            line.push_str(&format!(" -x sh -c {}", selfagent::desktop::shell_quote(c)));
        }
        self.open_window(&line, title).await
    }

    /// Polls a file in the sandbox until it exists (the agent's effect may land after
    /// the keystrokes that cause it); returns its bytes.
    pub async fn wait_file(&self, path: &str, timeout: Duration) -> Vec<u8> {
        wait::eventually(&format!("{path} in the desktop"), timeout, || async {
            match self.sandbox.read_file(path).await {
                Ok(data) if !data.is_empty() => Ok(data),
                Ok(_) => Err("an empty file".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }
}

/// Decodes a PNG into RGB8.
pub fn decode_png(png: &[u8]) -> image::RgbImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a valid PNG")
        .to_rgb8()
}

/// A minimal HTTP/1.1 request; returns the status code, headers and the first bytes of
/// the body (for a 101, the first bytes after the upgrade).
pub fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    // Read the head, then what follows as far as it comes quickly.
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if status == 101 {
                // The first WebSocket frame from the server follows.
                while buf.len() < end + 4 + 14 {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            } else {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            return (status, head, buf[end + 4..].to_vec());
        }
    }
    panic!("no HTTP response from {addr}{path}");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Headers of a WebSocket upgrade request.
pub fn websocket_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "binary"),
    ]
}

/// A local TCP port that carries each connection over a WebSocket to `path` at `view`.
pub async fn websocket_bridge(view: SocketAddr, path: String) -> SocketAddr {
    selfagent::sandbox::viewsock::bridge(view, path)
        .await
        .expect("a local port for the bridge")
}

/// Reads what a VNC client has pending until it is quiet for 300 ms.
pub async fn drain_updates(client: &vnc::VncClient) {
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), client.recv_event()).await
    {}
}
