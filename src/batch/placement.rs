//! Which engine runs the next episode of a batch: the least loaded one (desktops
//! running there, relative to its weight) below its `max_desktops`; none of a dead one. An
//! engine is dead once it stops answering: its running episodes end as harness errors (their
//! desktops are gone), and the batch goes on with the others.

use crate::sandbox::{Engine, EngineSpec};
use serde::Serialize;
use std::sync::Mutex;
use tokio::sync::Notify;

struct Slot {
    engine: Engine,
    spec: EngineSpec,
    running: usize,
    dead: bool,
    episodes: usize,
    harness_errors: usize,
}

/// The engines of a batch and what runs on each.
pub struct Placement {
    slots: Mutex<Vec<Slot>>,
    freed: Notify,
}

/// One engine's part in a batch, for the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EngineSummary {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_desktops: Option<usize>,
    pub weight: f64,
    pub episodes: usize,
    pub harness_errors: usize,
    /// It stopped answering during the batch.
    pub died: bool,
}

impl Placement {
    pub fn new(engines: Vec<(Engine, EngineSpec)>) -> Self {
        Self {
            slots: Mutex::new(
                engines
                    .into_iter()
                    .map(|(engine, spec)| Slot {
                        engine,
                        spec,
                        running: 0,
                        dead: false,
                        episodes: 0,
                        harness_errors: 0,
                    })
                    .collect(),
            ),
            freed: Notify::new(),
        }
    }

    /// A place for one episode: the engine's index and the engine. Waits while every live
    /// engine is full; `None` once every engine is dead.
    pub async fn acquire(&self) -> Option<(usize, Engine)> {
        loop {
            // Registered before looking, so a release between the look and the wait wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut slots = self.slots.lock().ok()?;
                if slots.iter().all(|s| s.dead) {
                    return None;
                }
                let best = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.dead && s.spec.max_desktops.is_none_or(|m| s.running < m))
                    .min_by(|(_, a), (_, b)| {
                        let load = |s: &Slot| (s.running + 1) as f64 / s.spec.weight;
                        load(a).total_cmp(&load(b))
                    })
                    .map(|(i, _)| i);
                if let Some(i) = best {
                    let slot = &mut slots[i];
                    slot.running += 1;
                    slot.episodes += 1;
                    return Some((i, slot.engine.clone()));
                }
            }
            freed.await;
        }
    }

    /// The episode on engine `i` ended; `harness_error` when the harness failed it.
    pub fn release(&self, i: usize, harness_error: bool) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(i)
        {
            slot.running = slot.running.saturating_sub(1);
            slot.harness_errors += usize::from(harness_error);
        }
        self.freed.notify_waiters();
    }

    /// Engine `i` stopped answering: no new episodes go there. True the first time.
    pub fn mark_dead(&self, i: usize) -> bool {
        let newly = self
            .slots
            .lock()
            .ok()
            .and_then(|mut slots| {
                slots
                    .get_mut(i)
                    .map(|s| !std::mem::replace(&mut s.dead, true))
            })
            .unwrap_or(false);
        // Waiters may now have no engine left at all.
        self.freed.notify_waiters();
        newly
    }

    pub fn url(&self, i: usize) -> String {
        self.slots
            .lock()
            .ok()
            .and_then(|s| s.get(i).map(|s| s.spec.url.clone()))
            .unwrap_or_default()
    }

    pub fn summary(&self) -> Vec<EngineSummary> {
        self.slots
            .lock()
            .map(|slots| {
                slots
                    .iter()
                    .map(|s| EngineSummary {
                        url: s.spec.url.clone(),
                        max_desktops: s.spec.max_desktops,
                        weight: s.spec.weight,
                        episodes: s.episodes,
                        harness_errors: s.harness_errors,
                        died: s.dead,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str, max: Option<usize>, weight: f64) -> EngineSpec {
        EngineSpec {
            url: url.into(),
            max_desktops: max,
            weight,
            reach: None,
        }
    }

    fn placement(specs: Vec<EngineSpec>) -> Placement {
        Placement::new(
            specs
                .into_iter()
                .map(|s| (Engine::in_memory().0, s))
                .collect(),
        )
    }

    #[tokio::test]
    async fn the_least_loaded_engine_by_weight_gets_the_next_episode() {
        let p = placement(vec![
            spec("tcp://a:1", None, 1.0),
            spec("tcp://b:1", None, 2.0),
        ]);
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(p.acquire().await.unwrap().0);
        }
        // b has twice the weight: it takes two of every three.
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 4, "{picks:?}");
        let s = p.summary();
        assert_eq!((s[0].episodes, s[1].episodes), (2, 4));
    }

    #[tokio::test]
    async fn a_full_engine_makes_the_next_episode_wait_and_a_dead_one_gets_none() {
        let p = std::sync::Arc::new(placement(vec![
            spec("tcp://a:1", Some(1), 1.0),
            spec("tcp://b:1", Some(1), 1.0),
        ]));
        let (a, _) = p.acquire().await.unwrap();
        let (b, _) = p.acquire().await.unwrap();
        assert_ne!(a, b);
        // Both full: the third waits until one is released.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.acquire().await.map(|(i, _)| i) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        p.release(b, false);
        assert_eq!(waiting.await.unwrap(), Some(b));
        // b dies: its place is never given again; a's is, once free.
        assert!(p.mark_dead(b));
        assert!(!p.mark_dead(b), "only the first time is news");
        p.release(b, true);
        p.release(a, false);
        assert_eq!(p.acquire().await.map(|(i, _)| i), Some(a));
        // Every engine dead: no place, and a waiter is woken to hear it.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.acquire().await.map(|(i, _)| i) }
        });
        tokio::task::yield_now().await;
        p.mark_dead(a);
        assert_eq!(waiting.await.unwrap(), None);
        let s = p.summary();
        assert!(s.iter().all(|e| e.died));
        assert_eq!(s[b].harness_errors, 1);
    }
}
