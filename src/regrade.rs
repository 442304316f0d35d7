//! Grading a recorded episode again, with the task's checks as they are now, without the
//! agent: commands and files come from the final-state snapshot image (an inspector
//! container started from it), or, without one, from what the checks read when the episode
//! ended. Every grade is added to the session's history; none is replaced.

use crate::model::HttpModel;
use crate::model::protocol::ProtocolName;

use crate::record::{Db, SessionRow};
use crate::sandbox::Engine;
use crate::task::Task;
use crate::task::check::{self, FinalState, Grade, Judge, SandboxEvidence, StoredEvidence};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::sync::Arc;

/// A re-grade: the grade before (if any) and the new one.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Regraded {
    pub session: String,
    pub task_id: String,
    pub before: Option<Grade>,
    pub after: Grade,
}

/// The task a session ran, as recorded with it.
pub fn recorded_task(session: &SessionRow) -> anyhow::Result<Task> {
    let v = session.meta.get("task").filter(|v| !v.is_null()).with_context(|| {
        format!(
            "session {} has no recorded task (it was not run from a task file): pass --task FILE",
            session.id
        )
    })?;
    serde_json::from_value(v.clone()).with_context(|| {
        format!(
            "the task recorded with session {} is not readable",
            session.id
        )
    })
}

/// The episode's screenshots in order (the first observation, then each step's result).
pub fn recorded_frames(db: &Db, session: &str) -> anyhow::Result<Vec<Arc<Vec<u8>>>> {
    let steps = db.steps(session)?;
    let mut ids: Vec<i64> = Vec::new();
    if let Some(first) = steps.first().and_then(|s| s.frame_before) {
        ids.push(first);
    }
    ids.extend(steps.iter().filter_map(|s| s.frame_after));
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(f) = db.frame(id)? {
            out.push(Arc::new(f.png));
        }
    }
    Ok(out)
}

/// What a re-grade may use besides the recording.
pub struct Graders<'a> {
    /// The Docker engine, for snapshot images; `None`: recorded state only.
    pub engine: Option<&'a Engine>,
    /// The judge model and its protocol, for checks that ask one.
    pub judge: Option<(Arc<HttpModel>, ProtocolName)>,
    pub prompts: Option<PathBuf>,
}

/// Grades `session` with `task`'s checks and adds the grade to its history.
pub async fn regrade(
    db: &Db,
    session: &SessionRow,
    task: &Task,
    with: &Graders<'_>,
) -> anyhow::Result<Regraded> {
    let Some(check) = &task.check else {
        bail!("task {} has no checks to grade with", task.id);
    };
    if session.status == "running" {
        bail!("session {} is still running", session.id);
    }
    let before = db
        .latest_grade(&session.id)?
        .and_then(|g| serde_json::from_value::<Grade>(g.details).ok());
    let state = db.final_state(&session.id)?.unwrap_or_default();
    let judge = match (check.asks_a_judge(), &with.judge) {
        (true, Some((model, protocol))) => Some(Judge {
            model: model.clone(),
            protocol: *protocol,
            instruction: task.instruction.clone(),
            frames: recorded_frames(db, &session.id)?,
            prompts: with.prompts.clone(),
        }),
        _ => None,
    };
    let snapshot = match (&state.snapshot, with.engine) {
        (Some(image), Some(engine)) if engine.image_exists(image).await.unwrap_or(false) => {
            Some((image.clone(), engine))
        }
        _ => None,
    };
    // How the agent ended, for OSWorld's infeasible tasks: as recorded with the grade, or
    // from the session (recordings before it was kept).
    let gave_up = state.gave_up.or_else(|| {
        (session.meta["ended_by"] == "model")
            .then(|| check::agent_gave_up(&session.status, session.answer.as_deref()))
    });
    let after = match snapshot {
        Some((image, engine)) => {
            let inspector = engine
                .inspect_snapshot(&image)
                .await
                .with_context(|| format!("starting an inspector from {image}"))?;
            let evidence = SandboxEvidence {
                gave_up,
                inspector: true,
                sandbox: inspector.clone(),
                windows: state
                    .windows
                    .clone()
                    .ok_or_else(|| "no window list was recorded when the episode ended".into()),
                judge,
            };
            let g = check::grade(&task.id, check, &evidence, &format!("snapshot {image}")).await;
            if let Err(e) = inspector.kill().await {
                tracing::warn!("removing the inspector of {image}: {e}");
            }
            g
        }
        None => {
            let evidence = StoredEvidence {
                state: FinalState { gave_up, ..state },
                judge,
            };
            check::grade(&task.id, check, &evidence, "recorded").await
        }
    };
    db.insert_grade(&session.id, &after)?;
    Ok(Regraded {
        session: session.id.clone(),
        task_id: task.id.clone(),
        before,
        after,
    })
}
