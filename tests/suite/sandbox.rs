//! Hardening, the token-gated live view, and desktops with no network.

use crate::common::wait::{check, eventually, never};
use crate::common::{self, Guard, desktop, desktop_with, http, test_spec, websocket_headers};
use pretty_assertions::assert_eq;
use selfagent::action::{Action, Point};
use selfagent::desktop::WindowMatch;
use selfagent::desktop::{ConnectOptions, Desktop};
use selfagent::sandbox::{ExecOptions, Network, Reach, SandboxSpec};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test]
async fn containers_are_hardened_and_bound_to_loopback() {
    let d = desktop().await;
    // As the engine itself reports it (the docker CLI, not our own reading of it).
    let out = std::process::Command::new("docker")
        .args(["inspect", d.sandbox.id()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = &info[0]["HostConfig"];
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o.as_str().unwrap().starts_with("no-new-privileges"))
    );
    assert_eq!(host["Memory"], 2i64 << 30);
    assert_eq!(host["PidsLimit"], 1024);
    assert_eq!(host["Init"], true);
    for (port, bindings) in host["PortBindings"].as_object().unwrap() {
        for b in bindings.as_array().unwrap() {
            assert_eq!(
                b["HostIp"], "127.0.0.1",
                "{port} is published beyond loopback"
            );
        }
    }
    let labels = info[0]["Config"]["Labels"].as_object().unwrap();
    for label in [
        "selfagent.created",
        "selfagent.ttl",
        "selfagent.session",
        "selfagent.owner",
    ] {
        assert!(labels.contains_key(label), "missing label {label}");
    }
    // The desktop runs as an unprivileged user with no capabilities.
    assert_eq!(d.sh("id -u").await.trim(), "1000");
    let caps = d.sh("grep CapEff /proc/self/status").await;
    assert!(caps.trim().ends_with("0000000000000000"), "{caps}");
    let out = d
        .sandbox
        .exec(&["sh", "-c", "su -c true root"], &ExecOptions::default())
        .await
        .unwrap();
    assert!(!out.success(), "became root inside the sandbox");
}

#[tokio::test]
async fn the_view_needs_the_token_and_serves_several_viewers() {
    let d = desktop().await;
    let url = d.sandbox.view_url().expect("a view URL");
    let addr = d.sandbox.endpoints().await.unwrap().view.expect("a view");
    let token = &d.sandbox.secrets().view_token;

    let (status, _, _) = http(addr, "/vnc.html", &[]);
    assert_eq!(status, 403, "the page is served without the token");
    let (status, _, _) = http(addr, "/vnc.html?token=wrong-token-wrong-token-wrong", &[]);
    assert_eq!(status, 403);
    let (status, _, _) = http(addr, "/app/ui.js", &[]);
    assert_eq!(status, 403);
    let mut ws = websocket_headers();
    let (status, _, _) = http(addr, "/websockify", &ws);
    assert_eq!(status, 403, "the VNC WebSocket opens without the token");

    let path = url.trim_start_matches(&format!("http://{addr}"));
    let (status, head, body) = http(addr, path, &[]);
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("noVNC"));
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a cookie for the page's scripts")
        .to_owned();
    assert!(cookie.ends_with(token.as_str()));
    let (status, _, _) = http(addr, "/app/ui.js", &[("Cookie", &cookie)]);
    assert_eq!(status, 200);

    // Two viewers at once, each reaching the VNC server through the WebSocket.
    ws.push(("Cookie", &cookie));
    let viewers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let ws: Vec<(String, String)> = ws
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                move || {
                    let headers: Vec<(&str, &str)> =
                        ws.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    http(addr, "/websockify", &headers)
                }
            })
        })
        .collect();
    for v in viewers {
        let (status, _, first_frame) = v.join().unwrap();
        assert_eq!(status, 101);
        // A binary frame carrying the RFB greeting.
        assert!(
            first_frame.windows(12).any(|w| w == b"RFB 003.008\n"),
            "no VNC greeting through the view: {first_frame:?}"
        );
    }
}

#[tokio::test]
async fn a_desktop_without_network_works_through_tunnels() {
    let d = desktop_with(SandboxSpec {
        network: Network::None,
        ..test_spec()
    })
    .await;
    assert!(d.sandbox.view_url().is_none() && d.sandbox.vnc_address().is_none());
    let shot = d.screenshot().await.unwrap();
    assert_eq!(common::decode_png(&shot.png).dimensions(), (1280, 800));
    d.terminal("tunnel-test", None).await;
    assert!(!d.windows().await.unwrap().is_empty());
    // Nothing but loopback inside.
    let out = d
        .sandbox
        .exec(
            &[
                "python3",
                "-c",
                "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)",
            ],
            &ExecOptions::default(),
        )
        .await
        .unwrap();
    assert!(!out.success(), "the sandbox reached the network");
    assert!(
        out.stderr_text().contains("unreachable"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn an_engine_reached_through_tunnels_drives_its_desktops_without_their_ports() {
    // What a desktop on another machine's engine gets: VNC and X11 through the Docker API,
    // never the ports published on that machine's loopback.
    let engine = common::engine().await.with_reach(Reach::Tunnels);
    let sandbox = engine
        .create(&test_spec())
        .await
        .expect("creating a desktop");
    let _guard = Guard(sandbox.id().to_owned());
    assert!(sandbox.vnc_address().is_none() && sandbox.view_url().is_none());
    let published = common::engine().await.get(sandbox.id()).await.unwrap();
    let direct = published.endpoints().await.unwrap();
    let tunneled = sandbox.endpoints().await.unwrap();
    assert_ne!(tunneled.vnc, direct.vnc);
    assert_ne!(tunneled.x11, direct.x11);

    let d = Desktop::connect(sandbox.clone(), ConnectOptions::default())
        .await
        .expect("ready through tunnels");
    let shot = d.screenshot().await.unwrap();
    assert_eq!(common::decode_png(&shot.png).dimensions(), (1280, 800));
    d.act(&Action::MouseMove {
        coordinate: Point::new(321, 123),
    })
    .await
    .unwrap();
    assert_eq!(d.cursor_position().await.unwrap(), Point::new(321, 123));
    d.act(&Action::Launch {
        app: "terminal".into(),
    })
    .await
    .unwrap();
    let m = WindowMatch {
        class: Some(regex::Regex::new("(?i)terminal").unwrap()),
        ..Default::default()
    };
    let term = d.wait_window(&m, Duration::from_secs(60)).await.unwrap();
    d.focus(term.id, Duration::from_secs(10)).await.unwrap();
    d.act(&Action::Type {
        text: "echo through-the-api > /tmp/tunneled.txt\n".into(),
    })
    .await
    .unwrap();
    eventually(
        "the typed command to run",
        Duration::from_secs(30),
        || async {
            let out = sandbox
                .exec(&["cat", "/tmp/tunneled.txt"], &ExecOptions::default())
                .await
                .unwrap();
            let text = out.stdout_text();
            check(text.trim() == "through-the-api", || text.clone())
        },
    )
    .await;
}

#[tokio::test]
async fn a_desktop_that_dies_while_starting_is_reported_at_once() {
    let engine = common::engine().await;
    let spec = SandboxSpec {
        env: vec![("SELFAGENT_X_SERVER".into(), "bogus".into())],
        ..test_spec()
    };
    let started = Instant::now();
    // It may die before `create` returns or while `connect` waits: both say why.
    let err = match engine.create(&spec).await {
        Err(e) => e.to_string(),
        Ok(sandbox) => {
            let _guard = Guard(sandbox.id().to_owned());
            Desktop::connect(
                sandbox,
                ConnectOptions {
                    timeout: Duration::from_secs(60),
                },
            )
            .await
            .unwrap_err()
            .to_string()
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("stopped while starting (exit code 2)")
            && err.contains("unknown SELFAGENT_X_SERVER 'bogus'"),
        "{err}"
    );
}

/// A VNC client through the view proxy at `path` (`/websockify?token=…`), authenticated
/// with `password`, once the first screen update has come; and the size it was told.
async fn view_vnc(view: SocketAddr, path: String, password: &str) -> (vnc::VncClient, (u16, u16)) {
    use vnc::{PixelFormat, VncConnector, VncEncoding, VncEvent, X11Event};
    let bridge = common::websocket_bridge(view, path).await;
    let tcp = tokio::net::TcpStream::connect(bridge).await.unwrap();
    let password = password.to_owned();
    let client = VncConnector::new(tcp)
        .set_auth_method(async move { Ok(password) })
        .allow_shared(true)
        .set_pixel_format(PixelFormat::bgra())
        .add_encoding(VncEncoding::Raw)
        .build()
        .unwrap()
        .try_start()
        .await
        .unwrap()
        .finish()
        .unwrap();
    client.input(X11Event::Refresh).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut size = (0, 0);
    loop {
        assert!(Instant::now() < deadline, "no screen came through the view");
        match tokio::time::timeout(Duration::from_secs(5), client.recv_event()).await {
            Ok(Ok(VncEvent::SetResolution(s))) => size = (s.width, s.height),
            Ok(Ok(VncEvent::RawImage(..))) => break,
            _ => {}
        }
    }
    (client, size)
}

/// Whether an update comes through `client` within `within` (after asking for one).
async fn an_update_comes(client: &vnc::VncClient, within: Duration) -> bool {
    use vnc::{VncEvent, X11Event};
    client.input(X11Event::Refresh).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, client.recv_event()).await {
        if matches!(e, VncEvent::RawImage(..) | VncEvent::Copy(..)) {
            return true;
        }
    }
    false
}

/// Through the view proxy with `token`, as a VNC client authenticating with `password`:
/// waits for a screen update (a watcher does see the screen), then asks to move the pointer
/// to `to`. The client stays open (the caller looks for the effect, or its absence).
async fn point_through_the_view(
    view: SocketAddr,
    token: &str,
    password: &str,
    to: (u16, u16),
) -> vnc::VncClient {
    point_through(view, format!("/websockify?token={token}"), password, to).await
}

async fn point_through(
    view: SocketAddr,
    path: String,
    password: &str,
    to: (u16, u16),
) -> vnc::VncClient {
    use vnc::X11Event;
    let (client, _) = view_vnc(view, path, password).await;
    client
        .input(X11Event::PointerEvent((to.0, to.1, 0).into()))
        .await
        .unwrap();
    client.input(X11Event::Refresh).await.unwrap();
    client
}

/// The pointer reaches `to` (evidence that input went through).
async fn pointer_reaches(d: &common::TestDesktop, to: (u16, u16)) {
    eventually("the pointer to move", Duration::from_secs(10), || async {
        let p = d.cursor_position().await.unwrap();
        check((p.x as u16, p.y as u16) == to, || format!("{p:?}"))
    })
    .await;
}

/// The pointer stays at `at` for a second (the control showed input takes far less).
async fn pointer_stays(d: &common::TestDesktop, at: Point, who: &str) {
    let moved = never(Duration::from_secs(1), || async {
        let p = d.cursor_position().await.unwrap();
        (p != at).then_some(p)
    })
    .await;
    assert_eq!(moved, None, "{who} moved the pointer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_only_url_shows_the_screen_and_drops_every_input() {
    let d = desktop().await;
    let secrets = d.sandbox.secrets().clone();
    let watch = d.sandbox.watch_url().expect("a view-only URL");
    assert!(watch.contains("view_only=1"), "{watch}");
    for secret in [&secrets.vnc_password, &secrets.view_token] {
        assert!(
            !watch.contains(secret.as_str()),
            "the view-only URL gives control"
        );
    }
    let view = d.sandbox.endpoints().await.unwrap().view.expect("a view");
    let path = watch.trim_start_matches(&format!("http://{view}"));
    let (status, head, _) = http(view, path, &[]);
    assert_eq!(status, 200, "{head}");

    let start = d.cursor_position().await.unwrap();
    // The control: the full token and password move the pointer.
    let target = if (start.x, start.y) == (300, 200) {
        (310, 210)
    } else {
        (300, 200)
    };
    let full =
        point_through_the_view(view, &secrets.view_token, &secrets.vnc_password, target).await;
    pointer_reaches(&d, target).await;
    let _ = full.close().await;
    let moved = d.cursor_position().await.unwrap();
    // The view-only password: Xvnc and the proxy both drop the input.
    let watcher = point_through_the_view(
        view,
        &secrets.watch_token,
        &secrets.watch_password,
        (10, 10),
    )
    .await;
    pointer_stays(&d, moved, "a watcher").await;
    let _ = watcher.close().await;
    // A watcher who learnt the full VNC password still only watches: the proxy drops it.
    let watcher =
        point_through_the_view(view, &secrets.watch_token, &secrets.vnc_password, (20, 20)).await;
    pointer_stays(&d, moved, "a watcher with the full password").await;
    let _ = watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_streams_show_one_window_each_and_follow_it() {
    let d = desktop().await;
    let a = d.terminal("stream-a", None).await;
    let b = d.terminal("stream-b", None).await;
    let secrets = d.sandbox.secrets().clone();
    // The agent listens on the first stream port, hoping to be served to viewers.
    let squat = d
        .sandbox
        .exec(
            &[
                "sh",
                "-c",
                "nohup python3 -m http.server --bind 127.0.0.1 5901 >/dev/null 2>&1 & \
                 for i in $(seq 1 100); do grep -q ':170D 00000000:0000 0A' /proc/net/tcp && exit 0; sleep 0.05; done; exit 1",
            ],
            &ExecOptions::default(),
        )
        .await
        .unwrap();
    assert!(squat.success(), "the agent's listener did not start");
    let sa = d.sandbox.window_stream("^stream-a$", false).await.unwrap();
    assert_ne!(sa.stream, 1, "a stream was put on the agent's port");
    let sb = d.sandbox.window_stream("^stream-b$", true).await.unwrap();
    assert_ne!(sa.stream, sb.stream, "two streams at once");
    assert_eq!(sa.title, "stream-a");
    assert!(sb.url.contains("view_only=1") && !sb.url.contains(&secrets.vnc_password));
    let err = d.sandbox.window_stream("^no such window$", false).await;
    assert!(
        err.unwrap_err()
            .to_string()
            .contains("no visible window matches"),
        "a missing window is said plainly"
    );
    let view = d.sandbox.endpoints().await.unwrap().view.expect("a view");
    // Stream a is window a: its size, not the screen's.
    let path_a = format!(
        "/websockify?stream={}&token={}",
        sa.stream, secrets.view_token
    );
    let (client, size) = view_vnc(view, path_a, &secrets.vnc_password).await;
    assert_eq!(
        (u32::from(size.0), u32::from(size.1)),
        (a.width, a.height),
        "the stream is not the window (the screen is {:?})",
        d.size()
    );
    assert_ne!((u32::from(size.0), u32::from(size.1)), d.size());
    // A viewer asking for the agent's port gets nothing from it.
    let (status, _, _) = http(
        view,
        &format!("/websockify?stream=1&token={}", secrets.view_token),
        &websocket_headers(),
    );
    assert_eq!(
        status, 404,
        "the proxy handed a viewer to the agent's listener"
    );
    // Moved, it is followed: typing into it still reaches the stream.
    let moved = d
        .sandbox
        .exec(
            &["xdotool", "windowmove", &a.id.to_string(), "400", "300"],
            &ExecOptions::default(),
        )
        .await
        .unwrap();
    assert!(
        moved.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    d.focus(a.id, Duration::from_secs(5)).await.unwrap();
    common::drain_updates(&client).await;
    d.act(&Action::Type {
        text: "echo followed\n".into(),
    })
    .await
    .unwrap();
    assert!(
        an_update_comes(&client, Duration::from_secs(10)).await,
        "typing into the moved window did not reach its stream"
    );
    // Stream b is view-only: a watcher of it cannot move the pointer.
    let before = d.cursor_position().await.unwrap();
    let watcher = point_through(
        view,
        format!(
            "/websockify?stream={}&token={}",
            sb.stream, secrets.watch_token
        ),
        &secrets.watch_password,
        (5, 5),
    )
    .await;
    pointer_stays(&d, before, "a view-only stream's watcher").await;
    let _ = watcher.close().await;
    let _ = b;
}
