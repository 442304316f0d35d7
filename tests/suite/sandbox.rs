//! Hardening, the token-gated live view, and desktops with no network.

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
    let info = d
        .sandbox
        .engine()
        .docker()
        .inspect_container(d.sandbox.id(), None)
        .await
        .unwrap();
    let host = info.host_config.unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(
        host.security_opt
            .unwrap()
            .iter()
            .any(|o| o.starts_with("no-new-privileges"))
    );
    assert_eq!(host.memory, Some(2 << 30));
    assert_eq!(host.pids_limit, Some(1024));
    for (port, bindings) in host.port_bindings.unwrap() {
        for b in bindings.unwrap() {
            assert_eq!(
                b.host_ip.as_deref(),
                Some("127.0.0.1"),
                "{port} is published beyond loopback"
            );
        }
    }
    let labels = info.config.unwrap().labels.unwrap();
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
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sandbox
            .exec(&["cat", "/tmp/tunneled.txt"], &ExecOptions::default())
            .await
            .unwrap();
        if out.stdout_text().trim() == "through-the-api" {
            break;
        }
        assert!(Instant::now() < deadline, "the typed command never ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
