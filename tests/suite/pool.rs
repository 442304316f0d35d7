//! Warm pools end to end: desktops started ahead, each leased once (also by processes that
//! race for them), replaced in the background, used by `run` and removed after it, kept by
//! `prune` while they wait. Each test uses a screen size no other test uses, so that no other
//! test's desktops come from its pool.

use crate::common::model_server::{ModelServer, answer, call};
use crate::common::{Guard, bin};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

fn selfagent(args: &[&str], home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin());
    c.args(args)
        .env("HOME", home)
        .env_remove("XDG_STATE_HOME")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("SELFAGENT_DB")
        .env_remove("SELFAGENT_CONFIG")
        .stdin(Stdio::null());
    c
}

async fn output(args: &[&str], home: &Path) -> (std::process::Output, String) {
    let out = selfagent(args, home).output().await.unwrap();
    let log = format!(
        "selfagent {}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, log)
}

/// The pool of `size` (`WxH`), as `pool ls --json` says.
async fn pool_of(size: &str, home: &Path) -> Option<Value> {
    let (out, log) = output(&["pool", "ls", "--json"], home).await;
    assert!(out.status.success(), "{log}");
    let (w, h) = size.split_once('x').unwrap();
    let (w, h): (u64, u64) = (w.parse().unwrap(), h.parse().unwrap());
    let pools: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    pools
        .into_iter()
        .find(|p| p["spec"]["width"] == w && p["spec"]["height"] == h)
}

/// The ids of the containers of a pool in a state (`ready`, `leased`, `warming`).
fn members(state: &str, key: &str) -> HashSet<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--no-trunc",
            "--filter",
            &format!("label=selfagent.pool={key}"),
            "--format",
            "{{.ID}} {{.Names}}",
        ])
        .output()
        .unwrap();
    let prefix = match state {
        "ready" => "selfagent-pr-",
        "leased" => "selfagent-pl-",
        _ => "selfagent-pw-",
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, name)| name.starts_with(prefix))
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// When Docker started a container.
fn started_at(id: &str) -> std::time::SystemTime {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.StartedAt}}", id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let secs = std::process::Command::new("date")
        .args(["+%s.%N", "-d", &text])
        .output()
        .unwrap();
    let secs: f64 = String::from_utf8_lossy(&secs.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("StartedAt {text:?}: {e}"));
    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs_f64(secs)
}

/// Removes a pool's desktops when dropped (also when the test fails).
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=selfagent.pool={}", self.0),
            ])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            crate::common::docker_rm(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_leases_never_share_a_desktop_and_the_pool_refills() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (out, log) = output(
        &[
            "pool", "up", "--size", "2", "--width", "1000", "--height", "700",
        ],
        home,
    )
    .await;
    assert!(out.status.success(), "{log}");
    let pool = pool_of("1000x700", home).await.expect("the pool is listed");
    let key = pool["key"].as_str().unwrap().to_owned();
    let _cleanup = PoolGuard(key.clone());
    assert_eq!(
        (pool["ready"].as_u64(), pool["size"].as_u64()),
        (Some(2), Some(2)),
        "{log}"
    );
    let ready_before = members("ready", &key);
    assert_eq!(ready_before.len(), 2);

    // Four processes at once ask for a desktop of the pool's kind: two get the pool's (each
    // a different one), two boot their own.
    let asked = std::time::SystemTime::now();
    let ups: Vec<_> = (0..4)
        .map(|_| {
            selfagent(
                &[
                    "sandbox", "up", "--json", "--width", "1000", "--height", "700",
                ],
                home,
            )
            .output()
        })
        .collect();
    let outs = futures_util::future::join_all(ups).await;
    let mut got: Vec<Value> = Vec::new();
    let mut guards = Vec::new();
    for o in outs {
        let o = o.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        guards.push(Guard(v["id"].as_str().unwrap().to_owned()));
        got.push(v);
    }
    let ids: HashSet<String> = got
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "four different desktops: {got:?}");
    let pooled: HashSet<String> = got
        .iter()
        .filter(|v| v["pooled"] == true)
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        pooled, ready_before,
        "exactly the pool's two were leased: {got:?}"
    );
    // A leased desktop was started before anyone asked for it (how fast a lease is belongs
    // to `selfagent bench`, not to a test sharing two cores with three other processes).
    for id in &pooled {
        let started = started_at(id);
        assert!(
            started < asked,
            "{id} started at {started:?}, after the leases began at {asked:?}"
        );
    }
    // Each leasing process refilled before it exited: two new ready desktops, none of them
    // one that was served.
    let ready_after = members("ready", &key);
    assert_eq!(ready_after.len(), 2, "refilled to its size");
    assert!(
        ready_after.is_disjoint(&pooled),
        "a leased desktop is never served again"
    );
    assert_eq!(members("leased", &key), pooled);

    // Waiting members outlive their filler: prune keeps them.
    let (out, log) = output(&["sandbox", "prune", "--json"], home).await;
    assert!(out.status.success(), "{log}");
    assert_eq!(members("ready", &key), ready_after, "{log}");

    // `pool down` removes the waiting ones; leased ones belong to their users.
    let (out, log) = output(&["pool", "down", &key], home).await;
    assert!(out.status.success(), "{log}");
    assert!(members("ready", &key).is_empty());
    assert_eq!(members("leased", &key), pooled);
    drop(guards);
    assert!(pool_of("1000x700", home).await.is_none(), "nothing left");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_leases_from_a_matching_pool_and_never_returns_the_desktop() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let (out, log) = output(
        &[
            "pool", "up", "--size", "1", "--width", "1024", "--height", "700",
        ],
        home,
    )
    .await;
    assert!(out.status.success(), "{log}");
    let key = pool_of("1024x700", home).await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let _cleanup = PoolGuard(key.clone());
    let member = members("ready", &key).into_iter().next().unwrap();

    let server = ModelServer::start(
        vec![
            call(json!({"action": "mouse_move", "coordinate": [10, 10]})),
            answer("done"),
            call(json!({"action": "mouse_move", "coordinate": [10, 10]})),
            answer("done"),
        ],
        (1024, 700),
    )
    .await;
    let db = home.join("rec.db");
    let run = |extra: &'static [&'static str]| {
        let mut args = vec![
            "run",
            "--headless",
            "--json",
            "--width",
            "1024",
            "--height",
            "700",
            "--db",
            db.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push("move the pointer");
        let mut c = selfagent(&args, home);
        c.env("OPENAI_BASE_URL", server.base_url())
            .env("OPENAI_API_KEY", "sk-test");
        c
    };
    let out = run(&[]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sandbox_of = |out: &std::process::Output| -> String {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|e| e["sandbox"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let used = sandbox_of(&out);
    assert_eq!(used, member, "the episode ran on the pool's desktop");
    // Used once: gone after the episode; the pool has a new one.
    let all = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&all.stdout).contains(&member));
    let ready = members("ready", &key);
    assert_eq!(ready.len(), 1);
    assert!(!ready.contains(&member));

    // --no-pool boots its own: the pool's desktop stays where it is.
    let out = run(&["--no-pool"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own = sandbox_of(&out);
    assert!(!own.is_empty() && !ready.contains(&own));
    assert_eq!(members("ready", &key), ready);
    assert!(server.problems().is_empty(), "{:?}", server.problems());
}
