//! Warm pools: desktops started ahead of need, ready and drawn, each leased once.
//!
//! No daemon: a pool is labelled containers. A member is created as
//! `selfagent-pw-<id>` (warming), renamed `selfagent-pr-<id>` once its desktop is drawn
//! (ready), and `selfagent-pl-<id>` when leased. Docker's names are unique and renaming a
//! container to the name it already has fails, so the rename to the leased name is an atomic
//! claim: two processes never get the same member. A leased member is never returned to the
//! pool (fresh state is the point of evaluation); it is removed after its episode, and the
//! leasing process starts a replacement in the background (waited for before it exits, see
//! [`finish_refills`]).
//!
//! The pool's key is a hash of what makes desktops interchangeable (image, size, DPI,
//! network, limits): `run`, `batch` and `sandbox up` lease from a pool whose key matches
//! their desktop. The filler leaves each member's credentials in a file only this user
//! reads (the state directory's `pool/<container id>`, mode 0600), which the leaser reads
//! and deletes: a lease needs no `docker exec`. Leases are recorded in `leases/<container
//! id>` with the leasing process, so `prune` removes the members of leasers that died.

use crate::desktop::{ConnectOptions, Desktop};
use crate::sandbox::leases::{forget, lease_file, secrets_file, write_private};
use crate::sandbox::{
    Engine, LABEL_POOL, LABEL_POOL_SIZE, LABEL_POOL_SPEC, Network, POOL_LEASED, POOL_READY,
    POOL_WARMING, Sandbox, SandboxError, SandboxInfo, SandboxSpec, Secrets, now_secs,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

/// The default TTL of a pool member, in seconds.
pub const DEFAULT_TTL: u64 = 6 * 3600;
/// How long a member may take to be drawn.
const DRAWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Members started at once by a fill (each boots a desktop: on two cores, two at a time).
const FILL_PARALLEL: usize = 2;

/// What makes desktops interchangeable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub dpi: u32,
    pub memory: i64,
    pub cpus: f64,
    pub pids: i64,
    pub shm: i64,
    pub network: Network,
    pub env: Vec<(String, String)>,
}

impl PoolSpec {
    pub fn of(spec: &SandboxSpec) -> Self {
        Self {
            image: spec.image.clone(),
            width: spec.width,
            height: spec.height,
            dpi: spec.dpi,
            memory: spec.memory,
            cpus: spec.cpus,
            pids: spec.pids,
            shm: spec.shm,
            network: spec.network,
            env: spec.env.clone(),
        }
    }

    /// The pool's key: 12 hex digits of the SHA-256 of the spec.
    pub fn key(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        crate::event::sha256_hex(json.as_bytes())[..12].to_owned()
    }

    /// The spec of a member with this `ttl`, in this `size` pool.
    fn member(&self, ttl: u64, size: usize) -> SandboxSpec {
        let suffix: String = crate::record::new_session_id()
            .chars()
            .rev()
            .take(6)
            .collect::<String>()
            + &format!("{:04x}", rand::random::<u16>());
        SandboxSpec {
            image: self.image.clone(),
            width: self.width,
            height: self.height,
            dpi: self.dpi,
            memory: self.memory,
            cpus: self.cpus,
            pids: self.pids,
            shm: self.shm,
            network: self.network,
            env: self.env.clone(),
            ttl,
            // Until it is ready, its filler owns it (a filler that dies leaves it to prune).
            owned: true,
            labels: vec![
                (LABEL_POOL.into(), self.key()),
                (
                    LABEL_POOL_SPEC.into(),
                    serde_json::to_string(self).unwrap_or_default(),
                ),
                (LABEL_POOL_SIZE.into(), size.to_string()),
            ],
            container_name: Some(format!("{POOL_WARMING}{suffix}")),
            ..SandboxSpec::default()
        }
    }
}

/// One pool, as `pool ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub key: String,
    pub spec: PoolSpec,
    pub size: usize,
    pub ready: usize,
    pub warming: usize,
    pub leased: usize,
}

fn members(all: &[SandboxInfo], key: &str) -> Vec<SandboxInfo> {
    all.iter()
        .filter(|s| s.pool.as_deref() == Some(key) && s.state == "running")
        .cloned()
        .collect()
}

/// Every pool on the engine.
pub async fn list(engine: &Engine) -> Result<Vec<PoolInfo>, SandboxError> {
    let all = engine.list().await?;
    let mut out: Vec<PoolInfo> = Vec::new();
    for s in all
        .iter()
        .filter(|s| s.pool.is_some() && s.state == "running")
    {
        let key = s.pool.clone().unwrap_or_default();
        let Some(spec) = s
            .labels
            .get(LABEL_POOL_SPEC)
            .and_then(|j| serde_json::from_str::<PoolSpec>(j).ok())
        else {
            continue;
        };
        let size: usize = s
            .labels
            .get(LABEL_POOL_SIZE)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let i = match out.iter().position(|p| p.key == key) {
            Some(i) => i,
            None => {
                out.push(PoolInfo {
                    key,
                    spec,
                    size: 0,
                    ready: 0,
                    warming: 0,
                    leased: 0,
                });
                out.len() - 1
            }
        };
        let p = &mut out[i];
        p.size = p.size.max(size);
        match s.pool_state.as_deref() {
            Some("ready") => p.ready += 1,
            Some("leased") => p.leased += 1,
            _ if !s.orphaned => p.warming += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// What a fill did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FillReport {
    pub key: String,
    pub started: usize,
    pub failed: Vec<String>,
}

/// Starts members until `size` are ready or warming (at most `limit` of them), and waits
/// until each is drawn.
pub async fn fill(
    engine: &Engine,
    spec: &PoolSpec,
    size: usize,
    limit: usize,
    ttl: u64,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<FillReport, SandboxError> {
    let key = spec.key();
    let all = engine.list().await?;
    let have = members(&all, &key)
        .iter()
        .filter(|m| m.pool_state.as_deref() != Some("leased") && !m.orphaned)
        .count();
    let missing = size.saturating_sub(have).min(limit);
    let mut report = FillReport {
        key: key.clone(),
        ..Default::default()
    };
    if missing == 0 {
        return Ok(report);
    }
    progress(&format!(
        "pool {key}: starting {missing} desktop{}",
        if missing == 1 { "" } else { "s" }
    ));
    let results: Vec<Result<String, String>> = futures_util::stream::iter(0..missing)
        .map(|_| warm_one(engine, spec, ttl, size))
        .buffer_unordered(FILL_PARALLEL)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(id) => {
                report.started += 1;
                progress(&format!(
                    "pool {key}: {} ready",
                    crate::text::prefix(&id, 12)
                ));
            }
            Err(e) => report.failed.push(e),
        }
    }
    Ok(report)
}

/// One member: created, drawn, then renamed ready.
async fn warm_one(
    engine: &Engine,
    spec: &PoolSpec,
    ttl: u64,
    size: usize,
) -> Result<String, String> {
    let member = spec.member(ttl, size);
    let warming = member.container_name.clone().unwrap_or_default();
    let sandbox = engine.create(&member).await.map_err(|e| e.to_string())?;
    let id = sandbox.id().to_owned();
    let ready = async {
        write_private(
            &secrets_file(&id),
            &sandbox.secrets().boot_file(spec.network == Network::Bridge),
        )
        .map_err(|e| format!("keeping the credentials of {}: {e}", sandbox.short_id()))?;
        let desktop = Desktop::connect(sandbox.clone(), ConnectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        desktop
            .wait_drawn(DRAWN_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        drop(desktop);
        let name = warming.replacen(POOL_WARMING, POOL_READY, 1);
        match engine.rename(&id, &name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{} went away while warming", sandbox.short_id())),
            Err(e) => Err(e.to_string()),
        }
    };
    match ready.await {
        Ok(()) => Ok(id),
        Err(e) => {
            let _ = sandbox.kill().await;
            forget(&id);
            Err(e)
        }
    }
}

/// How a lease is taken.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseOptions {
    /// The desktop outlives this process (`sandbox up`): `prune` does not take it for an
    /// orphan when this process exits.
    pub detached: bool,
    /// Do not start a replacement (bench measures leases alone).
    pub no_refill: bool,
}

/// A ready member of the pool that matches `spec`, claimed for this process, with at least
/// `min_ttl` seconds of its TTL left; `None` when there is none.
pub async fn lease(
    engine: &Engine,
    spec: &SandboxSpec,
    min_ttl: u64,
    opts: LeaseOptions,
) -> Result<Option<Sandbox>, SandboxError> {
    let key = PoolSpec::of(spec).key();
    let now = now_secs();
    let listed = engine
        .list_where(Some(&format!("{LABEL_POOL}={key}")))
        .await?;
    let mut ready: Vec<SandboxInfo> = members(&listed, &key)
        .into_iter()
        .filter(|m| m.pool_state.as_deref() == Some("ready"))
        .filter(|m| m.ttl == 0 || m.created + m.ttl >= now + min_ttl)
        .collect();
    // Different processes try different members first.
    fastrand_shuffle(&mut ready);
    for m in ready {
        let suffix = &m.container_name[POOL_READY.len()..];
        if !engine
            .rename(&m.id, &format!("{POOL_LEASED}{suffix}"))
            .await?
        {
            continue;
        }
        let owner = if opts.detached {
            "detached".to_owned()
        } else {
            crate::process::owner_token()
        };
        let _ = write_private(&lease_file(&m.id), &owner);
        let secrets = std::fs::read_to_string(secrets_file(&m.id))
            .ok()
            .map(|t| Secrets::parse_boot_file(&t))
            .filter(|s| !s.vnc_password.is_empty());
        let _ = std::fs::remove_file(secrets_file(&m.id));
        let sandbox = match secrets {
            Some(s) => engine.get_with(&m.id, s).await,
            None => engine.get(&m.id).await,
        };
        match sandbox {
            Ok(s) => {
                let size = m
                    .labels
                    .get(LABEL_POOL_SIZE)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                let spec = m
                    .labels
                    .get(LABEL_POOL_SPEC)
                    .and_then(|j| serde_json::from_str::<PoolSpec>(j).ok());
                if let Some(spec) = spec
                    && !opts.no_refill
                {
                    refill(engine.clone(), spec, size, m.ttl);
                }
                return Ok(Some(s));
            }
            Err(e) => {
                tracing::warn!("leased pool member {} is unusable: {e}", m.id);
                let _ = engine.remove(&m.id).await;
                forget(&m.id);
            }
        }
    }
    Ok(None)
}

fn fastrand_shuffle<T>(items: &mut [T]) {
    use rand::seq::SliceRandom;
    items.shuffle(&mut rand::rng());
}

/// Refills still running in this process.
static REFILLS: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Starts a replacement for a leased member in the background: one (leases racing each
/// other each replace their own), and none when the pool is full again.
fn refill(engine: Engine, spec: PoolSpec, size: usize, ttl: u64) {
    let task = tokio::spawn(async move {
        if let Err(e) = fill(&engine, &spec, size, 1, ttl, &|_| {}).await {
            tracing::warn!("refilling pool {}: {e}", spec.key());
        }
    });
    if let Ok(mut r) = REFILLS.lock() {
        r.retain(|t| !t.is_finished());
        r.push(task);
    }
}

/// Waits (up to `limit`) for the refills this process started, so that it does not exit
/// with a member half made.
pub async fn finish_refills(limit: Duration) {
    let tasks: Vec<_> = REFILLS
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    if tasks.is_empty() {
        return;
    }
    let _ = tokio::time::timeout(limit, futures_util::future::join_all(tasks)).await;
}

/// Removes the pool's ready and warming members (leased ones belong to their episodes);
/// every pool's with `key` `None`. Returns how many.
pub async fn down(engine: &Engine, key: Option<&str>) -> Result<usize, SandboxError> {
    let mut n = 0;
    for m in engine.list().await? {
        let Some(k) = &m.pool else { continue };
        if key.is_some_and(|key| key != k) || m.pool_state.as_deref() == Some("leased") {
            continue;
        }
        engine.remove(&m.id).await?;
        forget(&m.id);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// `n` ready members of `spec`'s pool on `engine`, as a fill leaves them (created
    /// warming, their credentials kept for the leaser, renamed ready).
    async fn ready_members(engine: &Engine, spec: &PoolSpec, n: usize, ttl: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let member = spec.member(ttl, n);
            let sandbox = engine.create(&member).await.unwrap();
            write_private(
                &secrets_file(sandbox.id()),
                &sandbox.secrets().boot_file(true),
            )
            .unwrap();
            let warming = member.container_name.unwrap();
            let ready = warming.replacen(POOL_WARMING, POOL_READY, 1);
            assert!(engine.rename(sandbox.id(), &ready).await.unwrap());
            ids.push(sandbox.id().to_owned());
        }
        ids
    }

    /// Forgets the members' state files when the test ends, passed or not (they live in the
    /// user's state directory).
    struct Forget(Vec<String>);

    impl Drop for Forget {
        fn drop(&mut self) {
            for id in &self.0 {
                forget(id);
            }
        }
    }

    const ALONE: LeaseOptions = LeaseOptions {
        detached: false,
        no_refill: true,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_leases_each_get_a_different_member_or_none() {
        let (engine, memory) = Engine::in_memory();
        let spec = SandboxSpec::default();
        let ids = ready_members(&engine, &PoolSpec::of(&spec), 3, DEFAULT_TTL).await;
        let _forget = Forget(ids.clone());
        let before = memory.renames.load(std::sync::atomic::Ordering::Relaxed);
        // Eight leasers at once for three members, every one of them seeing all three ready.
        memory.hold_lists(8);
        let leases = futures_util::future::join_all((0..8).map(|_| {
            let (engine, spec) = (engine.clone(), spec.clone());
            tokio::spawn(async move {
                lease(&engine, &spec, 0, ALONE)
                    .await
                    .unwrap()
                    .map(|s| s.id().to_owned())
            })
        }))
        .await;
        let got: Vec<String> = leases.into_iter().filter_map(|r| r.unwrap()).collect();
        let distinct: HashSet<&String> = got.iter().collect();
        assert_eq!(got.len(), 3, "each member is leased once: {got:?}");
        assert_eq!(distinct.len(), 3, "no member is leased twice: {got:?}");
        // Every leaser tried to claim; the losers lost, and tried the next member.
        let tried = memory.renames.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(tried >= 8, "only {tried} claims were tried");
        // And each is still there for its leaser (a lost claim taken for a won one would
        // find no credentials, and remove the member from under its owner).
        assert_eq!(memory.count(), 3, "a leased desktop was removed");
        for m in engine.list().await.unwrap() {
            assert_eq!(
                m.pool_state.as_deref(),
                Some("leased"),
                "{}",
                m.container_name
            );
            assert!(got.contains(&m.id), "{} is leased by nobody", m.id);
        }
        // Nothing ready is left: the next lease gets none (and would start a desktop).
        assert!(lease(&engine, &spec, 0, ALONE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_lease_skips_other_pools_and_members_too_close_to_their_end() {
        let (engine, _) = Engine::in_memory();
        let spec = SandboxSpec::default();
        let wide = SandboxSpec {
            width: 1920,
            height: 1080,
            ..SandboxSpec::default()
        };
        let short = ready_members(&engine, &PoolSpec::of(&spec), 1, 30).await;
        let other = ready_members(&engine, &PoolSpec::of(&wide), 1, DEFAULT_TTL).await;
        let _forget = Forget(short.iter().chain(&other).cloned().collect());
        // 30 s left is less than the 60 the episode needs; the other pool's is not ours.
        assert!(lease(&engine, &spec, 60, ALONE).await.unwrap().is_none());
        let got = lease(&engine, &wide, 60, ALONE).await.unwrap().unwrap();
        assert_eq!(got.id(), other[0]);
        assert_eq!(got.size(), (1920, 1080), "the handle is the member's");
        // Without enough time asked, the short one goes.
        let got = lease(&engine, &spec, 10, ALONE).await.unwrap().unwrap();
        assert_eq!(got.id(), short[0]);
    }

    #[tokio::test]
    async fn down_takes_ready_members_and_leaves_leased_ones_to_their_episodes() {
        let (engine, memory) = Engine::in_memory();
        let spec = SandboxSpec::default();
        let key = PoolSpec::of(&spec).key();
        let ids = ready_members(&engine, &PoolSpec::of(&spec), 3, DEFAULT_TTL).await;
        let _forget = Forget(ids);
        let leased = lease(&engine, &spec, 0, ALONE).await.unwrap().unwrap();
        assert_eq!(down(&engine, Some("another-pool")).await.unwrap(), 0);
        assert_eq!(down(&engine, Some(&key)).await.unwrap(), 2);
        assert_eq!(memory.count(), 1);
        let left = engine.list().await.unwrap();
        assert_eq!(left[0].id, leased.id());
        let pools = list(&engine).await.unwrap();
        assert_eq!((pools[0].ready, pools[0].leased), (0, 1));
    }

    #[test]
    fn keys_follow_what_makes_desktops_interchangeable() {
        let a = PoolSpec::of(&SandboxSpec::default());
        let same = PoolSpec::of(&SandboxSpec {
            ttl: 5,
            session: Some("s".into()),
            owned: true,
            ..SandboxSpec::default()
        });
        assert_eq!(a.key(), same.key(), "TTL, session and owner do not matter");
        let wider = PoolSpec::of(&SandboxSpec {
            width: 1920,
            ..SandboxSpec::default()
        });
        assert_ne!(a.key(), wider.key());
        assert_eq!(a.key().len(), 12);
        let member = a.member(60, 3);
        assert!(
            member
                .container_name
                .as_deref()
                .is_some_and(|n| n.starts_with(POOL_WARMING))
        );
        assert_eq!(PoolSpec::of(&member), a, "a member is in its own pool");
    }
}
