//! An in-memory provider: containers that are only records, for unit tests of what sits
//! above the seam (the pool's claims, placement) without any engine.
//!
//! It keeps Docker's rules that those depend on: names are unique, a rename to a taken name
//! (or of a container that is gone) loses, removal of what is gone is fine, and listing
//! filters by labels. It runs no command, and files written to it are dropped.

use super::SandboxError;
use super::provider::{
    Attached, ContainerPlan, ContainerState, ExecRequest, Fut, ImageInfo, Listed, Provider,
};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Record {
    plan: ContainerPlan,
    name: String,
    status: &'static str,
    ports: HashMap<u16, u16>,
}

/// See the module docs.
#[derive(Default)]
pub struct Memory {
    containers: Mutex<HashMap<String, Record>>,
    next: AtomicU64,
    /// Every rename tried, won or lost: what a race test counts.
    pub renames: AtomicU64,
    /// While set, each of the next listings (the count left) returns only once all of them
    /// are under way: racing callers all see the same containers, as they would when an
    /// engine is slow. Later listings do not wait.
    lists: Mutex<Option<(Arc<tokio::sync::Barrier>, usize)>>,
}

impl Memory {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Record>) -> T) -> T {
        let mut all = self
            .containers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut all)
    }

    /// The full id an id or a unique prefix names.
    fn find(all: &HashMap<String, Record>, id: &str) -> Option<String> {
        let hits: Vec<&String> = all.keys().filter(|k| k.starts_with(id)).collect();
        match hits.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        }
    }

    /// Makes the next `n` listings wait for each other (see `lists`).
    pub fn hold_lists(&self, n: usize) {
        if let Ok(mut l) = self.lists.lock() {
            *l = Some((Arc::new(tokio::sync::Barrier::new(n)), n));
        }
    }

    /// How many containers there are.
    pub fn count(&self) -> usize {
        self.with(|all| all.len())
    }
}

fn matches(labels: &HashMap<String, String>, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(filter),
    }
}

fn unsupported(what: &str) -> SandboxError {
    SandboxError::Invalid(format!("the in-memory provider cannot {what}"))
}

impl Provider for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn ping(&self) -> Fut<'_, Result<(), SandboxError>> {
        Box::pin(async { Ok(()) })
    }

    fn version(&self) -> Fut<'_, Option<String>> {
        Box::pin(async { Some("memory".to_owned()) })
    }

    fn image<'a>(&'a self, image: &'a str) -> Fut<'a, Result<Option<ImageInfo>, SandboxError>> {
        Box::pin(async move {
            Ok(Some(ImageInfo {
                id: format!("sha256:{image}"),
                tags: vec![image.to_owned()],
                ..ImageInfo::default()
            }))
        })
    }

    fn create<'a>(&'a self, plan: &'a ContainerPlan) -> Fut<'a, Result<String, SandboxError>> {
        Box::pin(async move {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            // Random, as an engine's are: ids name files in the state directory, which
            // tests running at once share.
            let id: String = (0..4)
                .map(|_| format!("{:016x}", rand::random::<u64>()))
                .collect();
            let name = plan.name.clone().unwrap_or_else(|| format!("memory-{n}"));
            self.with(|all| {
                if all.values().any(|r| r.name == name) {
                    return Err(SandboxError::Invalid(format!("the name {name} is taken")));
                }
                let ports = plan
                    .publish
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (*p, 40_000 + (n as u16 % 1000) * 4 + i as u16))
                    .collect();
                all.insert(
                    id.clone(),
                    Record {
                        plan: plan.clone(),
                        name,
                        status: "created",
                        ports,
                    },
                );
                Ok(id)
            })
        })
    }

    fn start<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            self.with(|all| {
                let full = Self::find(all, id).ok_or_else(|| SandboxError::NotFound(id.into()))?;
                if let Some(r) = all.get_mut(&full) {
                    r.status = "running";
                }
                Ok(())
            })
        })
    }

    fn stop<'a>(&'a self, id: &'a str, _grace: Duration) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            self.with(|all| {
                let full = Self::find(all, id).ok_or_else(|| SandboxError::NotFound(id.into()))?;
                if let Some(r) = all.get_mut(&full) {
                    r.status = "exited";
                }
                Ok(())
            })
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> Fut<'a, Result<(), SandboxError>> {
        Box::pin(async move {
            self.with(|all| {
                if let Some(full) = Self::find(all, id) {
                    all.remove(&full);
                }
            });
            Ok(())
        })
    }

    fn inspect<'a>(&'a self, id: &'a str) -> Fut<'a, Result<ContainerState, SandboxError>> {
        Box::pin(async move {
            self.with(|all| {
                let full = Self::find(all, id).ok_or_else(|| SandboxError::NotFound(id.into()))?;
                let r = &all[&full];
                Ok(ContainerState {
                    id: full,
                    status: r.status.to_owned(),
                    exit_code: None,
                    oom_killed: false,
                    labels: r.plan.labels.clone(),
                    env: r
                        .plan
                        .env
                        .iter()
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    ports: r.ports.clone(),
                    home_is_volume: !r.plan.volumes.is_empty(),
                })
            })
        })
    }

    fn list<'a>(&'a self, labels: &'a [&'a str]) -> Fut<'a, Result<Vec<Listed>, SandboxError>> {
        Box::pin(async move {
            let listed = self.with(|all| {
                all.iter()
                    .filter(|(_, r)| labels.iter().all(|l| matches(&r.plan.labels, l)))
                    .map(|(id, r)| Listed {
                        id: id.clone(),
                        name: r.name.clone(),
                        image: r.plan.image.clone(),
                        state: r.status.to_owned(),
                        status: r.status.to_owned(),
                        labels: r.plan.labels.clone(),
                        ports: r.ports.clone(),
                    })
                    .collect()
            });
            let barrier = self
                .lists
                .lock()
                .ok()
                .and_then(|mut held| match held.as_mut() {
                    Some((barrier, left)) if *left > 0 => {
                        *left -= 1;
                        Some(barrier.clone())
                    }
                    _ => None,
                });
            if let Some(barrier) = barrier {
                barrier.wait().await;
            }
            Ok(listed)
        })
    }

    fn rename<'a>(&'a self, id: &'a str, name: &'a str) -> Fut<'a, Result<bool, SandboxError>> {
        Box::pin(async move {
            self.renames.fetch_add(1, Ordering::Relaxed);
            // Yield first, so racing claims interleave as they would against an engine.
            tokio::task::yield_now().await;
            Ok(self.with(|all| {
                let Some(full) = Self::find(all, id) else {
                    return false;
                };
                if all.values().any(|r| r.name == name) {
                    return false;
                }
                if let Some(r) = all.get_mut(&full) {
                    r.name = name.to_owned();
                }
                true
            }))
        })
    }

    fn logs<'a>(&'a self, _id: &'a str, _tail: usize) -> Fut<'a, String> {
        Box::pin(async { String::new() })
    }

    fn wait_exit<'a>(&'a self, _id: &'a str) -> Fut<'a, Option<i64>> {
        Box::pin(std::future::pending())
    }

    fn exec<'a>(
        &'a self,
        _id: &'a str,
        _request: ExecRequest,
    ) -> Fut<'a, Result<Attached, SandboxError>> {
        Box::pin(async { Err(unsupported("run commands")) })
    }

    fn exec_exit_code<'a>(&'a self, _exec: &'a str) -> Fut<'a, Result<Option<i64>, SandboxError>> {
        Box::pin(async { Err(unsupported("run commands")) })
    }

    fn put_archive<'a>(
        &'a self,
        _id: &'a str,
        _dir: &'a str,
        _tar: Vec<u8>,
    ) -> Fut<'a, Result<(), SandboxError>> {
        // Accepted and dropped: a desktop's credentials go in this way before it starts.
        Box::pin(async { Ok(()) })
    }

    fn get_archive(
        &self,
        _id: &str,
        _path: &str,
    ) -> BoxStream<'static, Result<Bytes, SandboxError>> {
        Box::pin(futures_util::stream::once(async {
            Err(unsupported("hold files"))
        }))
    }

    fn remove_volume<'a>(&'a self, _name: &'a str) -> Fut<'a, Result<bool, SandboxError>> {
        Box::pin(async { Ok(false) })
    }
}
