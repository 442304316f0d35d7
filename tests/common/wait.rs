//! Waiting on evidence: the one way these tests wait for something to happen.
//!
//! A test never sleeps a fixed time and hopes: a fresh CI machine is slower than ours, and a
//! fixed sleep is either too short there or wasted here. It polls for the evidence (a file, a
//! window, a line, a row), starting fast and backing off, until a generous deadline; when the
//! deadline passes it fails with what it waited for and what it last saw.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// The first pause between probes; it doubles up to [`LONGEST`].
const FIRST: Duration = Duration::from_millis(20);
const LONGEST: Duration = Duration::from_millis(250);

/// Probes until `probe` gives `Ok` (the evidence) and returns it; panics after `within`
/// with `what` and the last `Err` (what was seen instead).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    let mut pause = FIRST;
    loop {
        let seen = match probe().await {
            Ok(evidence) => return evidence,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for {what}; last seen: {seen}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST);
    }
}

/// [`eventually`] for tests without a runtime.
pub fn eventually_blocking<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    let mut pause = FIRST;
    loop {
        let seen = match probe() {
            Ok(evidence) => return evidence,
            Err(seen) => seen,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "waited {within:?} for {what}; last seen: {seen}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST);
    }
}

/// Probes for `window` and returns the first thing that should not have happened, or
/// `None` when nothing did: the one wait that is a time, because it proves an absence (a
/// paused loop makes no request). It returns as soon as the absence is broken.
pub async fn never<T, F, Fut>(window: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + window;
    let mut pause = FIRST;
    while Instant::now() < deadline {
        if let Some(broken) = probe().await {
            return Some(broken);
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(LONGEST);
    }
    probe().await
}

/// `Ok(())` when `holds`, else the `seen` it describes: for probes of a condition.
pub fn check(holds: bool, seen: impl FnOnce() -> String) -> Result<(), String> {
    if holds { Ok(()) } else { Err(seen()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_returns_the_evidence_once_it_appears() {
        let mut n = 0;
        let got = eventually("the third probe", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move {
                if now >= 3 {
                    Ok(now)
                } else {
                    Err(format!("probe {now}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "last seen: still 0")]
    async fn eventually_fails_with_what_it_last_saw() {
        eventually::<(), _, _>("nothing", Duration::from_millis(100), || async {
            Err("still 0".to_owned())
        })
        .await;
    }

    #[tokio::test]
    async fn never_reports_the_first_thing_that_happened() {
        let start = Instant::now();
        let broken = never(Duration::from_secs(5), || async {
            (start.elapsed() > Duration::from_millis(60)).then_some("it moved")
        })
        .await;
        assert_eq!(broken, Some("it moved"));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            never(Duration::from_millis(80), || async { None::<()> }).await,
            None
        );
    }
}
