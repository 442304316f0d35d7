//! `selfagent batch`: every task K times, N desktops at once, each episode recorded and
//! graded; a progress display while it runs; a summary table, `report.json`, JUnit XML and
//! an HTML report with thumbnails at the end.
//!
//! Episodes are independent: each has its own desktop, its own recorder connection to the
//! shared database (WAL), and its own model conversation. A failed setup is a harness
//! error, reported apart from the agent's failures. Ctrl-C stops the running episodes after
//! their current action, starts no new ones, and still writes the reports.

pub mod compare;
pub mod placement;
pub mod report;
pub mod state;
pub mod stats;

use crate::agent::{self, EndedBy, Event};
use crate::config;
use crate::episode::{self, End, Hooks, Plan};
use crate::record::Db;
use crate::sandbox::{Engine, EngineSpec};
use crate::settings::{CommonArgs, Resolved, resolve};
use crate::task::{self, Task};
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use report::{BatchMeta, EpisodeReport, HarnessRetry, Memory, Report};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The exit codes are the episode's: one set for `run`, `batch` and `calibrate`.
pub use crate::episode::{EXIT_HARNESS, EXIT_STOPPED};

#[derive(Debug, Clone, Args, serde::Serialize, serde::Deserialize)]
#[command(
    after_help = "Every task must have checks. Reports go to --report DIR (default: \
<db dir>/batches/<batch id>/): report.json, junit.xml, report.html.\n\
Exit codes: 0 the batch ran (whatever the agent scored), 4 some episodes failed because of \
the harness (a desktop did not start, a setup step failed, checks could not run) even after \
--retry-harness, 3 the batch's cost limit (--max-total-cost) was reached and it stopped, \
130 stopped with Ctrl-C (the reports cover what finished).\n\
The report directory holds the batch's configuration (batch.json) and each episode's state \
(episodes.jsonl) from the start: a batch cut short (killed, crashed, stopped) is finished \
with `selfagent batch --resume DIR`, which runs only the episodes without a grade."
)]
pub struct BatchArgs {
    /// Task files (TOML or JSON) or directories of them.
    #[arg(required_unless_present = "resume", value_name = "TASKS")]
    pub tasks: Vec<PathBuf>,
    /// Finish the batch whose report directory this is: its saved settings and tasks, only
    /// the episodes not yet graded (one cut short or stopped is run again and marked, one
    /// lost to the harness gets another go), the same report completed. Takes no other
    /// flag but --json; keys come from the environment.
    #[arg(long, value_name = "DIR")]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Times an episode lost to the harness (its desktop or engine died, a setup step
    /// failed) is run again before it counts as a harness error. Retried attempts are
    /// listed in the report and never count as the model's failures.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retry_harness: u32,
    /// Desktops at once.
    #[arg(long, short = 'j', default_value_t = 1)]
    pub parallel: usize,
    /// Episodes per task.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Only the tasks whose id matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub filter: Option<String>,
    /// Where the reports go.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Print report.json on stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Calibrate first (`selfagent calibrate`): refuse to start when the model's clicks do
    /// not land (median error above --calibrate-max-error).
    #[arg(long)]
    pub calibrate: bool,
    /// With --calibrate: the largest median click error, in screen pixels.
    #[arg(long, value_name = "PX", default_value_t = crate::calibrate::DEFAULT_MAX_ERROR, requires = "calibrate")]
    pub calibrate_max_error: f64,
    /// A Docker engine to spread the episodes over; repeat for several:
    /// `URL[,max=N][,weight=W][,reach=direct|tunnels]` (unix:///PATH or tcp://HOST:PORT).
    /// Default: `[[engines]]` in the config file, else the local engine (DOCKER_HOST).
    #[arg(long = "engine", value_name = "URL[,max=N]")]
    pub engines: Vec<EngineSpec>,
    /// Dollars for the whole batch: once the finished episodes cost this much, no new
    /// episode starts and the running ones stop after their current action (needs the
    /// model's price, as --max-cost). --max-cost still caps each episode.
    #[arg(long, value_name = "USD")]
    pub max_total_cost: Option<f64>,
    /// The no-op agent: no model and no action, only each task's setup, post steps and
    /// checks (what `tasks audit` runs). A task that passes this way is broken.
    #[arg(long, conflicts_with_all = ["calibrate", "max_total_cost"])]
    pub no_agent: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The endpoint recorded for `--no-agent` episodes, which never call it.
pub const NO_AGENT_URL: &str = "http://127.0.0.1:9/no-agent/v1";

/// One episode to run.
struct Job {
    n: usize,
    task: Arc<Task>,
    cfg: Arc<Resolved>,
    repeat: u32,
    /// Earlier attempts lost to the harness.
    retries: Vec<HarnessRetry>,
    /// Its desktop (the task's screen size unless the flags give one).
    spec: crate::sandbox::SandboxSpec,
}

/// What is running now, for the progress line.
#[derive(Default)]
struct Live {
    /// Episode number → (task id, current step).
    running: BTreeMap<usize, (String, u32)>,
    passed: usize,
    failed: usize,
    harness: usize,
}

impl Live {
    fn count(&mut self, ep: &EpisodeReport) {
        match (ep.harness_error.is_some(), ep.passed) {
            (true, _) => self.harness += 1,
            (false, true) => self.passed += 1,
            (false, false) => self.failed += 1,
        }
    }

    fn message(&self) -> String {
        let mut s = format!(
            "{} passed · {} failed · {} harness errors",
            self.passed, self.failed, self.harness
        );
        if !self.running.is_empty() {
            let names: Vec<String> = self
                .running
                .values()
                .map(|(t, step)| format!("{t}@{step}"))
                .collect();
            s.push_str(&format!(" · running {}", names.join(" ")));
        }
        s
    }
}

/// The batch's engines (`--engine`, else `[[engines]]`, else the local one), each reachable
/// and holding the image.
async fn connect_engines(
    flags: &[EngineSpec],
    file: Option<&[EngineSpec]>,
    images: &[String],
) -> anyhow::Result<Vec<(Engine, EngineSpec)>> {
    let specs: Vec<EngineSpec> = if !flags.is_empty() {
        flags.to_vec()
    } else {
        file.map(<[EngineSpec]>::to_vec).unwrap_or_default()
    };
    let mut engines = Vec::new();
    if specs.is_empty() {
        let engine = Engine::connect().await?;
        let spec = EngineSpec {
            url: engine.url().to_owned(),
            max_desktops: None,
            weight: 1.0,
            reach: Some(engine.reach()),
        };
        engines.push((engine, spec));
    }
    for spec in specs {
        if engines
            .iter()
            .any(|(_, s): &(Engine, EngineSpec)| s.url == spec.url)
        {
            bail!("engine {} is given twice", spec.url);
        }
        let engine = Engine::connect_to(&spec).await?;
        engines.push((engine, spec));
    }
    for (engine, image) in engines
        .iter()
        .flat_map(|(e, _)| images.iter().map(move |i| (e, i)))
    {
        if !engine.image_exists(image).await? {
            let flavor = if image == crate::sandbox::image::OFFICE_IMAGE {
                " --flavor office"
            } else {
                ""
            };
            bail!(
                "the desktop image {image} is missing on the engine at {}: run `selfagent \
                 sandbox build{flavor}` there (DOCKER_HOST={} selfagent sandbox build{flavor}), \
                 or copy it: docker save {image} | docker -H {} load",
                engine.url(),
                engine.url(),
                engine.url()
            );
        }
    }
    Ok(engines)
}

/// `--calibrate`: one calibration with the batch's model settings; an error unless usable.
async fn calibrate_first(
    engine: &Engine,
    cfg: &Resolved,
    spec: &crate::sandbox::SandboxSpec,
    max_error: f64,
) -> anyhow::Result<report::Calibrated> {
    use crate::calibrate::Verdict;
    eprintln!(
        "calibrating: {} ({} protocol, --coords {}), {} targets",
        cfg.model.model, cfg.agent.protocol.name, cfg.agent.protocol.space, CALIBRATION_TARGETS
    );
    let plan = episode::calibration_plan(cfg.clone(), spec.clone(), CALIBRATION_TARGETS, max_error);
    let (hooks, _control) = Hooks::new();
    let end = episode::run(engine, plan, hooks).await?;
    match &end.calibration {
        None => bail!(
            "the calibration did not finish ({}); no episode was run (session {})",
            end.outcome.error.as_deref().unwrap_or("no report"),
            end.session
        ),
        Some(r) if r.verdict != Verdict::Usable => {
            eprint!("{}", crate::calibrate::render(r));
            bail!(
                "calibration: {}; the batch was not started (session {})",
                r.message,
                end.session
            )
        }
        Some(r) => {
            eprintln!("calibration: {} (session {})", r.message, end.session);
            Ok(report::Calibrated {
                session: end.session.clone(),
                median_px: r.median_px,
                message: r.message.clone(),
            })
        }
    }
}

/// Targets of a batch's calibration.
const CALIBRATION_TARGETS: usize = 9;

fn print_line(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The control channels of the running episodes, by job.
type Controls = Arc<Mutex<BTreeMap<usize, mpsc::Sender<agent::Command>>>>;

/// Asks every running episode to stop after its current action.
async fn stop_running(controls: &Controls) {
    let senders: Vec<_> = controls
        .lock()
        .map(|c| c.values().cloned().collect())
        .unwrap_or_default();
    for s in senders {
        let _ = s.send(agent::Command::Stop).await;
    }
}

pub async fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    run_report(args).await.map(|(code, _)| code)
}

/// What the workers of a batch share.
#[derive(Clone)]
struct Shared {
    queue: Arc<Mutex<VecDeque<Job>>>,
    /// Set to take no new job (a stop, or the batch's cost limit reached).
    stopping: Arc<AtomicBool>,
    spent: Arc<Mutex<f64>>,
    max_total_cost: Option<f64>,
    controls: Controls,
    live: Arc<Mutex<Live>>,
    done: mpsc::Sender<(Job, String, anyhow::Result<End>)>,
    placement: Arc<placement::Placement>,
    bar: ProgressBar,
    snapshot: Option<u64>,
    source: episode::Source,
    state: Arc<state::Log>,
    retry_harness: u32,
}

/// One worker: a place on an engine, then a job, then its episode, until the queue is
/// empty, the batch stops, or no engine is left.
async fn worker(w: Shared) {
    loop {
        if w.stopping.load(Ordering::SeqCst) {
            break;
        }
        // A place first (waiting while every engine is full), then a job: with no
        // engine left, the jobs stay in the queue and are reported as not run.
        let Some((slot, engine)) = w.placement.acquire().await else {
            break;
        };
        let Some(mut job) = w.queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            w.placement.release(slot, false);
            break;
        };
        // The session id is known before the episode starts, so the state log can name the
        // recording of an episode the batch is killed in.
        let session = crate::record::new_session_id();
        w.state.append(&state::Line::Started {
            n: job.n,
            task_id: job.task.id.clone(),
            repeat: job.repeat,
            session: session.clone(),
            at_ms: crate::time::now_ms(),
        });
        let (mut hooks, control) = Hooks::new();
        if let Ok(mut c) = w.controls.lock() {
            c.insert(job.n, control);
        }
        let (tx, mut rx) = mpsc::channel::<Arc<Event>>(1024);
        hooks.sinks.push(tx);
        if let Ok(mut l) = w.live.lock() {
            l.running.insert(job.n, (job.task.id.clone(), 0));
            w.bar.set_message(l.message());
        }
        let watcher = {
            let live = w.live.clone();
            let bar = w.bar.clone();
            let n = job.n;
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    if let Event::StepStarted { step } = &*e
                        && let Ok(mut l) = live.lock()
                    {
                        if let Some(r) = l.running.get_mut(&n) {
                            r.1 = *step;
                        }
                        bar.set_message(l.message());
                    }
                }
            })
        };
        let plan = Plan {
            cfg: (*job.cfg).clone(),
            spec: job.spec.clone(),
            task: Some((*job.task).clone()),
            keep: false,
            snapshot: w.snapshot,
            session: Some(session.clone()),
            calibration: None,
            driver: crate::episode::Driver::Model,
            source: w.source.clone(),
        };
        let end = episode::run(&engine, plan, hooks).await;
        let _ = watcher.await;
        let harness = match &end {
            Ok(end) => end.harness_error().is_some(),
            Err(_) => true,
        };
        // A harness error may be the engine going away: if it no longer answers,
        // it gets no new episodes.
        if harness && !engine.answers(Duration::from_secs(5)).await && w.placement.mark_dead(slot) {
            print_line(
                &w.bar,
                &format!(
                    "engine {} stopped answering: its running episodes end as harness \
                     errors, no new ones go there",
                    engine.url()
                ),
            );
        }
        if let (Some(max), Ok(end)) = (w.max_total_cost, &end)
            && let Ok(mut total) = w.spent.lock()
        {
            *total += end.outcome.cost.unwrap_or(0.0);
            if *total >= max {
                w.stopping.store(true, Ordering::SeqCst);
            }
        }
        w.placement.release(slot, harness);
        if let Ok(mut c) = w.controls.lock() {
            c.remove(&job.n);
        }
        if let Ok(mut l) = w.live.lock() {
            l.running.remove(&job.n);
        }
        // A harness error is run again (on whichever engine has a place) while retries
        // are left and the batch goes on; the lost attempt is kept in the report apart.
        let lost = match &end {
            Ok(e) => e.harness_error(),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(error) = lost
            && (job.retries.len() as u32) < w.retry_harness
            && !w.stopping.load(Ordering::SeqCst)
        {
            let retry = HarnessRetry {
                session_id: end.as_ref().map_or(session, |e| e.session.clone()),
                error,
            };
            print_line(
                &w.bar,
                &format!(
                    "RETRY {} #{}: harness error, running it again ({} of {}): {}",
                    job.task.id,
                    job.repeat,
                    job.retries.len() + 1,
                    w.retry_harness,
                    crate::task::check::excerpt(&retry.error)
                ),
            );
            w.state.append(&state::Line::Retried {
                n: job.n,
                retry: retry.clone(),
            });
            job.retries.push(retry);
            if let Ok(mut q) = w.queue.lock() {
                q.push_front(job);
            }
            continue;
        }
        if w.done
            .send((job, engine.url().to_owned(), end))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Runs the batch; its exit code and its report.
pub async fn run_report(mut args: BatchArgs) -> anyhow::Result<(ExitCode, Report)> {
    let resumed = match args.resume.clone() {
        Some(dir) => {
            let loaded = resume_from(&args, &dir)?;
            let (json, base_url) = (args.json, args.common.base_url.clone());
            args = loaded.saved.args.clone();
            args.json = json;
            // An endpoint with credentials in it was not saved: it comes from the
            // environment again (OPENAI_BASE_URL), as keys do.
            if args.common.base_url.is_none() {
                args.common.base_url = base_url;
            }
            Some((dir, loaded))
        }
        None => {
            // Saved as given would depend on the directory it was started from.
            args.tasks = args
                .tasks
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                .collect();
            None
        }
    };
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let mut tasks = task::load_all(&args.tasks)?;
    if let Some(f) = &args.filter {
        let re = regex::Regex::new(f).context("--filter is not a valid regex")?;
        tasks.retain(|t| re.is_match(&t.id));
        if tasks.is_empty() {
            bail!("no task id matches --filter {f}");
        }
    }
    let unchecked: Vec<&str> = tasks
        .iter()
        .filter(|t| t.check.is_none())
        .map(|t| t.id.as_str())
        .collect();
    if !unchecked.is_empty() {
        bail!(
            "a batch grades every episode, but these tasks have no [check]: {}",
            unchecked.join(", ")
        );
    }
    args.common.check_sudo(tasks.iter())?;
    let file = config::load(args.common.config.as_deref())?;
    if let Some(max) = args.max_total_cost
        && !(max.is_finite() && max > 0.0)
    {
        bail!("--max-total-cost must be a positive number of dollars");
    }
    if args.no_agent {
        args.common
            .base_url
            .get_or_insert_with(|| NO_AGENT_URL.to_owned());
        args.common
            .model
            .get_or_insert_with(|| "no-agent".to_owned());
    } else {
        crate::preflight::before_desktop(&mut args.common, &file).await?;
    }
    let mut resolved = Vec::new();
    for t in &tasks {
        let mut cfg = resolve(&args.common, &file, t.instruction.clone(), &t.limits)
            .with_context(|| format!("task {}", t.id))?;
        if args.no_agent {
            // No step: the episode ends at its step limit before any model call, and is
            // graded as the setup left the desktop.
            cfg.agent.max_steps = 0;
        }
        resolved.push(Arc::new(cfg));
    }
    let db_path = resolved[0].db.clone();
    if args.max_total_cost.is_some() && resolved[0].agent.price.is_none() {
        bail!(
            "--max-total-cost needs the price of {}: add [prices.\"{0}\"] input = …, output = … (dollars per million tokens) to the config file",
            resolved[0].model.model
        );
    }
    let spec = args.common.spec();
    // Every image the tasks start from (the office one for `desktop = "office"`).
    let mut images: Vec<String> = tasks
        .iter()
        .filter(|t| t.from.is_none())
        .map(|t| t.image(&spec.image))
        .collect();
    images.sort();
    images.dedup();
    let engines = connect_engines(&args.engines, file.engines.as_deref(), &images).await?;
    if let Some((_, loaded)) = &resumed {
        remove_cut_desktops(&engines, loaded).await;
    }
    let engine = engines[0].0.clone();
    let several = engines.len() > 1;
    let placement = Arc::new(placement::Placement::new(engines));
    let digests: BTreeMap<String, String> = tasks
        .iter()
        .map(|t| (t.id.clone(), task_digest(t)))
        .collect();
    let all_jobs: Vec<(String, u32)> = (1..=args.repeat)
        .flat_map(|r| tasks.iter().map(move |t| (t.id.clone(), r)))
        .collect();
    let (batch_id, report_dir, calibration, started_at, state) = match &resumed {
        Some((dir, loaded)) => {
            let saved = &loaded.saved;
            let changed: Vec<&String> = digests
                .iter()
                .filter(|(id, d)| saved.task_digests.get(*id) != Some(*d))
                .map(|(id, _)| id)
                .collect();
            if !changed.is_empty() || all_jobs != saved.jobs {
                bail!(
                    "the tasks changed since batch {} started ({}): resuming would mix two \
                     versions of them; start a new batch",
                    saved.id,
                    if changed.is_empty() {
                        "a different task list".to_owned()
                    } else {
                        changed
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            (
                saved.id.clone(),
                dir.clone(),
                saved.calibration.clone(),
                saved.started_at_ms,
                Arc::new(state::Log::open(dir, false)?),
            )
        }
        None => {
            let calibration = if args.calibrate {
                Some(calibrate_first(&engine, &resolved[0], &spec, args.calibrate_max_error).await?)
            } else {
                None
            };
            let batch_id = crate::record::new_session_id();
            let report_dir = args.report.clone().unwrap_or_else(|| {
                db_path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("batches")
                    .join(&batch_id)
            });
            std::fs::create_dir_all(&report_dir).with_context(|| {
                format!("creating the report directory {}", report_dir.display())
            })?;
            let started_at = crate::time::now_ms();
            state::save(
                &report_dir,
                &state::Saved {
                    version: state::VERSION,
                    id: batch_id.clone(),
                    started_at_ms: started_at,
                    args: saved_args(&args, &report_dir)?,
                    jobs: all_jobs.clone(),
                    task_digests: digests.clone(),
                    calibration: calibration.clone(),
                },
            )?;
            let log = Arc::new(state::Log::open(&report_dir, true)?);
            (batch_id, report_dir, calibration, started_at, log)
        }
    };
    state.append(&state::Line::Segment {
        at_ms: crate::time::now_ms(),
        pid: std::process::id(),
    });

    let tasks: Vec<Arc<Task>> = tasks.into_iter().map(Arc::new).collect();
    let earlier = resumed.as_ref().map(|(_, l)| l);
    let mut queue = VecDeque::new();
    let mut n = 0;
    for r in 1..=args.repeat {
        for (t, cfg) in tasks.iter().zip(&resolved) {
            if !earlier.is_some_and(|l| l.finished.contains_key(&n)) {
                queue.push_back(Job {
                    n,
                    task: t.clone(),
                    cfg: cfg.clone(),
                    repeat: r,
                    retries: earlier
                        .and_then(|l| l.retries.get(&n).cloned())
                        .unwrap_or_default(),
                    spec: args.common.spec_for(Some(t)),
                });
            }
            n += 1;
        }
    }
    let total = all_jobs.len();
    let done_before = total - queue.len();
    let parallel = args.parallel.min(queue.len()).max(1);
    let started = Instant::now();

    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} episodes · ETA {eta} · {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    bar.set_position(done_before as u64);
    print_line(
        &bar,
        &format!(
            "batch {batch_id}: {} tasks × {} = {total} episodes, {parallel} at once, recording to {}{}",
            tasks.len(),
            args.repeat,
            db_path.display(),
            match earlier {
                Some(l) => format!(
                    "; resumed: {done_before} finished before, {} to run ({} cut short, run again)",
                    total - done_before,
                    l.cut.len()
                ),
                None => format!("; state in {} (resume with --resume)", report_dir.display()),
            }
        ),
    );

    let memory = report::MemorySampler::start();
    let queue = Arc::new(Mutex::new(queue));
    let stopping = Arc::new(AtomicBool::new(false));
    // Dollars the finished episodes cost: a worker adds its episode's before it takes the
    // next job, so none starts once the batch's limit is reached.
    let spent = Arc::new(Mutex::new(earlier.map_or(0.0, |l| {
        l.finished.values().filter_map(|e| e.cost).sum::<f64>()
    })));
    let max_total_cost = args.max_total_cost;
    let controls: Controls = Arc::default();
    let mut episodes: Vec<EpisodeReport> = earlier
        .map(|l| l.finished.values().cloned().collect())
        .unwrap_or_default();
    let live = Arc::new(Mutex::new(Live::default()));
    if let Ok(mut l) = live.lock() {
        for e in &episodes {
            l.count(e);
        }
    }
    let (done_tx, mut done_rx) = mpsc::channel::<(Job, String, anyhow::Result<End>)>(total);
    let shared = Shared {
        queue: queue.clone(),
        stopping: stopping.clone(),
        spent: spent.clone(),
        max_total_cost,
        controls: controls.clone(),
        live: live.clone(),
        done: done_tx,
        placement: placement.clone(),
        bar: bar.clone(),
        snapshot: args.common.snapshot(),
        source: args.common.source(),
        state: state.clone(),
        retry_harness: args.retry_harness,
    };
    let workers: Vec<_> = (0..parallel)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    drop(shared);

    let mut interrupts = 0;
    let mut over_budget = false;
    let mut stop_signals = crate::signals::StopSignals::new();
    loop {
        tokio::select! {
            finished = done_rx.recv() => {
                let Some((job, engine_url, end)) = finished else { break };
                let mut ep = EpisodeReport::new(&job.task.id, job.repeat, end);
                if several {
                    ep.engine = Some(engine_url);
                }
                ep.redone = earlier.and_then(|l| l.cut.get(&job.n).cloned());
                ep.harness_retries = job.retries;
                state.append(&state::Line::Finished {
                    n: job.n,
                    at_ms: crate::time::now_ms(),
                    episode: Box::new(ep.clone()),
                });
                if let Ok(mut l) = live.lock() {
                    l.count(&ep);
                    bar.set_message(l.message());
                }
                print_line(&bar, &ep.line());
                bar.inc(1);
                episodes.push(ep);
                let total = spent.lock().map_or(0.0, |s| *s);
                if let Some(max) = args.max_total_cost
                    && total >= max
                    && !over_budget
                {
                    over_budget = true;
                    stopping.store(true, Ordering::SeqCst);
                    print_line(&bar, &format!(
                        "the batch's cost limit ({}) was reached ({} spent): no new episodes start, the running ones stop after their current action",
                        crate::model::price::dollars(max),
                        crate::model::price::dollars(total)
                    ));
                    stop_running(&controls).await;
                }
            }
            name = stop_signals.recv() => {
                interrupts += 1;
                if interrupts > 1 {
                    bar.abandon();
                    eprintln!("quitting at once; leftover desktops stop at their TTL (`selfagent sandbox prune` removes them now)");
                    std::process::exit(i32::from(EXIT_STOPPED));
                }
                stopping.store(true, Ordering::SeqCst);
                print_line(&bar, &format!("{name}: stopping; the running episodes end after their current action, no new ones start (again to quit at once)"));
                stop_running(&controls).await;
            }
        }
    }
    for w in workers {
        let _ = w.await;
    }
    bar.finish_and_clear();
    let memory: Memory = memory.stop();
    let stopped = stopping.load(Ordering::SeqCst);
    episodes.sort_by_key(|e| (e.task_id.clone(), e.repeat));

    let first = &resolved[0];
    let meta = BatchMeta {
        id: batch_id,
        started_at: crate::time::iso8601(started_at),
        wall_ms: started.elapsed().as_millis() as u64 + earlier.map_or(0, |l| l.wall_ms),
        parallel,
        repeat: args.repeat,
        model: first.model.model.clone(),
        protocol: first.agent.protocol.name.to_string(),
        coords: first.agent.protocol.space.to_string(),
        base_url: crate::model::redact_url(&first.model.base_url),
        image: spec.image.clone(),
        settings: model_settings(&args.common),
        task_digests: digests,
        sudo: tasks
            .iter()
            .filter(|t| t.sudo)
            .map(|t| t.id.clone())
            .collect(),
        resumed: earlier.map_or(0, |l| l.segments),
        db: db_path.display().to_string(),
        calibration,
        tasks: tasks.len(),
        episodes: total,
        finished: episodes.len(),
        not_run: total - episodes.len(),
        engines: if several {
            placement.summary()
        } else {
            Vec::new()
        },
        stopped,
        over_budget,
        memory,
    };
    let report = Report::new(meta, &tasks, episodes);
    let db = Db::open(&db_path)?;
    let written = report.write(&report_dir, &db, &tasks)?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::out!("{}", report.table());
    }
    eprintln!(
        "reports: {} (open {} in a browser)",
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        report_dir.join("report.html").display()
    );
    let code = if over_budget {
        ExitCode::from(crate::episode::EXIT_LIMIT)
    } else if stopped {
        ExitCode::from(EXIT_STOPPED)
    } else if report.episodes.iter().any(|e| e.harness_error.is_some()) {
        ExitCode::from(EXIT_HARNESS)
    } else {
        ExitCode::SUCCESS
    };
    Ok((code, report))
}

impl BatchArgs {
    /// `selfagent batch ARGS…` as the command line would give them.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            batch: BatchArgs,
        }
        let all = std::iter::once(std::ffi::OsString::from("batch"))
            .chain(args.into_iter().map(Into::into));
        <Only as clap::Parser>::try_parse_from(all).map(|o| o.batch)
    }
}

/// `--resume DIR`: the batch saved there, refusing flags that would change it.
fn resume_from(args: &BatchArgs, dir: &std::path::Path) -> anyhow::Result<state::Loaded> {
    let plain = BatchArgs::parse_from(["--resume".as_ref(), dir.as_os_str()])?;
    let given = flag_differences(&serde_json::to_value(args)?, &serde_json::to_value(&plain)?);
    let given: Vec<String> = given.into_iter().filter(|f| f != "--json").collect();
    if !given.is_empty() {
        bail!(
            "--resume runs the batch with the settings and tasks it started with: leave out {}",
            given.join(", ")
        );
    }
    let loaded = state::load(dir)?;
    let left = loaded.saved.jobs.len() - loaded.finished.len();
    if left == 0 {
        eprintln!(
            "batch {}: every episode finished already; writing its reports again",
            loaded.saved.id
        );
    }
    Ok(loaded)
}

/// The flags whose values differ between two serialized [`BatchArgs`], as `--name`.
fn flag_differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in a {
        let w = b.get(k).unwrap_or(&serde_json::Value::Null);
        if v.is_object() {
            out.extend(flag_differences(v, w));
        } else if v != w {
            out.push(if k == "tasks" {
                "the task files".to_owned()
            } else {
                format!("--{}", k.replace('_', "-"))
            });
        }
    }
    out
}

/// The flags as `batch.json` keeps them: the report directory made absolute, and no
/// endpoint that carries credentials (user:password@ or a query string).
fn saved_args(args: &BatchArgs, report_dir: &std::path::Path) -> anyhow::Result<BatchArgs> {
    let mut saved = BatchArgs {
        report: Some(std::path::absolute(report_dir)?),
        ..args.clone()
    };
    if let Some(url) = &saved.common.base_url
        && crate::model::redact_url(url) != *url
    {
        saved.common.base_url = None;
    }
    Ok(saved)
}

/// The desktops of episodes a killed batch left behind (their process is gone, their
/// sessions cut short), removed before those episodes run again.
async fn remove_cut_desktops(engines: &[(Engine, EngineSpec)], loaded: &state::Loaded) {
    let cut: std::collections::BTreeSet<&String> = loaded.cut.values().collect();
    if cut.is_empty() {
        return;
    }
    for (engine, _) in engines {
        let Ok(list) = engine.list().await else {
            continue;
        };
        for info in list {
            if info.session.as_ref().is_some_and(|s| cut.contains(s)) && !info.owner_alive {
                match engine.remove(&info.id).await {
                    Ok(()) => eprintln!(
                        "removed desktop {} of session {} (cut short when the batch stopped)",
                        info.name,
                        info.session.as_deref().unwrap_or_default()
                    ),
                    Err(e) => eprintln!("could not remove desktop {}: {e}", info.name),
                }
            }
        }
    }
}

/// The flags given that change what the model sees or may do, by name (for `compare`):
/// everything in [`CommonArgs`] but where things are kept, how desktops are found, secrets'
/// names, and what the report names apart (model, endpoint, protocol, coords, image).
pub fn model_settings(common: &CommonArgs) -> BTreeMap<String, String> {
    const APART: &[&str] = &[
        "base_url",
        "model",
        "protocol",
        "coords",
        "image",
        "from",
        "api_key_env",
        "grounder_api_key_env",
        "db",
        "config",
        "no_snapshot",
        "snapshot_max_size",
        "no_pool",
    ];
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(common) else {
        return BTreeMap::new();
    };
    fields
        .into_iter()
        .filter(|(k, _)| !APART.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let text = match v {
                serde_json::Value::Null | serde_json::Value::Bool(false) => return None,
                serde_json::Value::Array(a) if a.is_empty() => return None,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Some((k, text))
        })
        .collect()
}

/// A task's digest: the SHA-256 of its whole definition, first 16 hex digits.
pub fn task_digest(task: &Task) -> String {
    let text = serde_json::to_string(task).unwrap_or_default();
    crate::event::sha256_hex(text.as_bytes())[..16].to_owned()
}

impl EpisodeReport {
    fn new(task_id: &str, repeat: u32, end: anyhow::Result<End>) -> Self {
        let name = |v: serde_json::Value| v.as_str().unwrap_or("?").to_owned();
        match end {
            Err(e) => Self {
                task_id: task_id.to_owned(),
                repeat,
                session_id: String::new(),
                passed: false,
                score: 0.0,
                status: "error".into(),
                ended_by: "harness".into(),
                harness_error: Some(format!("{e:#}")),
                steps: 0,
                wall_ms: 0,
                tokens_in: 0,
                tokens_out: 0,
                answer: None,
                error: None,
                grade: None,
                engine: None,
                cost: None,
                redone: None,
                harness_retries: Vec::new(),
            },
            Ok(end) => {
                let o = &end.outcome;
                let harness_error = end.harness_error();
                Self {
                    task_id: task_id.to_owned(),
                    repeat,
                    session_id: end.session.clone(),
                    passed: harness_error.is_none()
                        && end.grade.as_ref().and_then(|g| g.passed) == Some(true),
                    score: end.grade.as_ref().map_or(0.0, |g| g.score),
                    status: name(serde_json::to_value(o.status).unwrap_or_default()),
                    ended_by: name(serde_json::to_value(o.ended_by).unwrap_or_default()),
                    harness_error,
                    steps: o.steps,
                    wall_ms: o.wall_ms,
                    tokens_in: o.tokens_in,
                    tokens_out: o.tokens_out,
                    cost: o.cost,
                    answer: o.answer.clone(),
                    error: if o.ended_by == EndedBy::Harness {
                        None
                    } else {
                        o.error.clone()
                    },
                    grade: end.grade,
                    engine: None,
                    redone: None,
                    harness_retries: Vec::new(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> BatchArgs {
        BatchArgs::parse_from(list).unwrap()
    }

    #[test]
    fn the_saved_configuration_holds_no_credentials_and_resume_names_extra_flags() {
        let dir = std::path::Path::new("/tmp/r");
        let with = parse(&["t.toml", "--base-url", "https://me:secret@host/v1?key=k"]);
        let saved = saved_args(&with, dir).unwrap();
        assert_eq!(saved.common.base_url, None);
        assert!(!serde_json::to_string(&saved).unwrap().contains("secret"));
        let plain = parse(&["t.toml", "--base-url", "http://127.0.0.1:8000/v1"]);
        assert_eq!(
            saved_args(&plain, dir).unwrap().common.base_url.as_deref(),
            Some("http://127.0.0.1:8000/v1")
        );
        let a = serde_json::to_value(parse(&[
            "--resume",
            "d",
            "--repeat",
            "5",
            "--max-steps",
            "3",
        ]))
        .unwrap();
        let b = serde_json::to_value(parse(&["--resume", "d"])).unwrap();
        let mut named = flag_differences(&a, &b);
        named.sort();
        assert_eq!(named, ["--max-steps", "--repeat"]);
    }
}
