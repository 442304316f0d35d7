//! The recording as MCP resources, so a host can read what an episode did:
//! `selfagent://sessions` (the latest sessions), `selfagent://sessions/{id}` (one session,
//! its steps with their actions and frames, its grades) and `selfagent://frames/{id}` (a
//! screenshot, PNG).

use super::Hub;
use crate::record::Db;
use base64::Engine as _;
use rmcp::ErrorData;
use rmcp::model::{ReadResourceResult, Resource, ResourceContents, ResourceTemplate};
use serde_json::json;

const SESSIONS: &str = "selfagent://sessions";
const SESSION: &str = "selfagent://sessions/";
const FRAME: &str = "selfagent://frames/";
/// Sessions listed by `selfagent://sessions`, newest first.
const LISTED: usize = 100;

pub fn list(_hub: &Hub) -> Vec<Resource> {
    vec![
        Resource::new(SESSIONS, "sessions")
            .with_description(
                "The latest recorded sessions (episodes, MCP sessions), newest first, as JSON.",
            )
            .with_mime_type("application/json"),
    ]
}

pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(format!("{SESSION}{{id}}"), "session")
            .with_description(
                "One recorded session: what it was, how it ended, every step (actions, timings, tokens, the frames before and after as selfagent://frames/{id}) and its grades, as JSON.",
            )
            .with_mime_type("application/json"),
        ResourceTemplate::new(format!("{FRAME}{{id}}"), "frame")
            .with_description("A recorded screenshot, PNG.")
            .with_mime_type("image/png"),
    ]
}

fn not_found(uri: &str, why: impl std::fmt::Display) -> ErrorData {
    ErrorData::resource_not_found(format!("{uri}: {why}"), None)
}

fn frame_uri(id: Option<i64>) -> Option<String> {
    id.map(|i| format!("{FRAME}{i}"))
}

/// Reads one resource (blocking: SQLite).
pub fn read(hub: &Hub, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let path = &hub.options().db;
    let open = || {
        if !path.exists() {
            return Err(not_found(uri, "nothing is recorded yet"));
        }
        Db::open_read(path).map_err(|e| not_found(uri, e))
    };
    let text = |value: serde_json::Value| {
        ReadResourceResult::new(vec![
            ResourceContents::text(value.to_string(), uri).with_mime_type("application/json"),
        ])
    };
    if uri == SESSIONS {
        if !path.exists() {
            return Ok(text(json!({"sessions": []})));
        }
        let db = open()?;
        let rows = db.sessions(LISTED).map_err(|e| not_found(uri, e))?;
        let sessions: Vec<_> = rows
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "uri": format!("{SESSION}{}", s.id),
                    "created_at": s.created_at,
                    "status": s.status,
                    "instruction": s.instruction,
                    "task_id": s.task_id,
                    "model": s.model,
                    "source": s.meta.get("source").and_then(|v| v.as_str()).unwrap_or("agent"),
                    "steps": s.steps,
                })
            })
            .collect();
        return Ok(text(json!({ "sessions": sessions })));
    }
    if let Some(id) = uri.strip_prefix(SESSION) {
        let db = open()?;
        let session = db.session(id).map_err(|e| not_found(uri, e))?;
        let steps = db.steps(&session.id).map_err(|e| not_found(uri, e))?;
        let grades = db.grades(&session.id).map_err(|e| not_found(uri, e))?;
        let steps: Vec<_> = steps
            .iter()
            .map(|s| {
                json!({
                    "idx": s.idx,
                    "started_at": s.started_at,
                    "before": frame_uri(s.frame_before),
                    "after": frame_uri(s.frame_after),
                    "thought": s.thought,
                    "text": s.text,
                    "actions": s.actions,
                    "error": s.error,
                    "model_ms": s.model_ms,
                    "act_ms": s.act_ms,
                    "settle_ms": s.settle_ms,
                    "step_ms": s.step_ms,
                    "tokens_in": s.tokens_in,
                    "tokens_out": s.tokens_out,
                })
            })
            .collect();
        return Ok(text(json!({
            "session": session,
            "source": session.meta.get("source").and_then(|v| v.as_str()).unwrap_or("agent"),
            "steps": steps,
            "grades": grades,
        })));
    }
    if let Some(id) = uri.strip_prefix(FRAME) {
        let id: i64 = id
            .parse()
            .map_err(|_| not_found(uri, "a frame id is a number"))?;
        let db = open()?;
        let frame = db
            .frame(id)
            .map_err(|e| not_found(uri, e))?
            .ok_or_else(|| not_found(uri, "no such frame"))?;
        return Ok(ReadResourceResult::new(vec![
            ResourceContents::blob(
                base64::engine::general_purpose::STANDARD.encode(&frame.png),
                uri,
            )
            .with_mime_type("image/png"),
        ]));
    }
    Err(not_found(
        uri,
        "selfagent's resources are selfagent://sessions, selfagent://sessions/{id} and selfagent://frames/{id}",
    ))
}
