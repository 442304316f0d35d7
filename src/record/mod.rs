//! Recordings: every episode, step by step, in SQLite (see docs/ARCHITECTURE.md, "The recording").
//!
//! - [`Db`] opens a recording (WAL, migrations by `user_version`, sessions of dead
//!   processes marked `interrupted`) and answers the queries `sessions`, replay and grading
//!   need.
//! - [`Recorder`] is the one writer: a thread that owns its connection and consumes the
//!   loop's [`Event`]s from a bounded channel. Each finished step is one transaction (the
//!   step row, its frames, the session's running totals), so a killed process keeps every
//!   step it finished. Closing the event channel drains the queue before the thread ends.
//! - Screenshots are stored once per distinct PNG (`frames`, by SHA-256); requests are
//!   stored with their images as `frame:<id>` references. No secret is stored: every text
//!   passes through [`redact`] with the API key and the desktop's credentials.

use crate::event::{Event, Frame, SessionInfo};
use crate::task::check::{FinalState, Grade};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// The `grader` of grades made by a task's checks.
pub const GRADER: &str = "checks";

/// Where recordings go unless `--db` says otherwise.
pub const DEFAULT_DB: &str = "recordings/selfagent.db";

/// `PRAGMA application_id` of a recording ("SAG1"): tells it from other SQLite files.
const APPLICATION_ID: i64 = 0x5341_4731;

/// In recorded requests and responses, strings at least this long are stored once (in
/// `texts`) and referred to as `{"$text": id}`: a long reply that every later request
/// repeats costs its bytes once, not once per step.
const SHARED_TEXT: usize = 1024;
const TEXT_REF: &str = "$text";

/// How long a busy database is waited for before an operation fails.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Append-only: never edit or remove a shipped migration.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        ended_at INTEGER,
        status TEXT NOT NULL,
        instruction TEXT NOT NULL,
        task_id TEXT,
        model TEXT,
        base_url TEXT,
        protocol TEXT,
        image TEXT,
        sandbox TEXT,
        width INTEGER,
        height INTEGER,
        steps INTEGER NOT NULL DEFAULT 0,
        tokens_in INTEGER NOT NULL DEFAULT 0,
        tokens_out INTEGER NOT NULL DEFAULT 0,
        wall_ms INTEGER,
        answer TEXT,
        error TEXT,
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX sessions_created ON sessions(created_at);
    CREATE TABLE frames (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        png BLOB NOT NULL
    );
    CREATE TABLE steps (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        idx INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        frame_before INTEGER REFERENCES frames(id),
        frame_after INTEGER REFERENCES frames(id),
        request TEXT,
        response TEXT,
        thought TEXT,
        text TEXT,
        actions TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        model_ms REAL,
        act_ms REAL,
        settle_ms REAL,
        step_ms REAL,
        tokens_in INTEGER NOT NULL DEFAULT 0,
        tokens_out INTEGER NOT NULL DEFAULT 0,
        meta TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (session_id, idx)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        at INTEGER NOT NULL,
        step INTEGER,
        kind TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX events_session ON events(session_id);
    CREATE TABLE grades (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        grader TEXT NOT NULL,
        score REAL,
        passed INTEGER,
        details TEXT,
        graded_at INTEGER NOT NULL
    );
    CREATE INDEX grades_session ON grades(session_id);",
    // 2: what the checks read at the end of an episode, and its snapshot image.
    "CREATE TABLE final_states (
        session_id TEXT PRIMARY KEY REFERENCES sessions(id),
        snapshot TEXT,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_task ON sessions(task_id);",
    // 3: long texts stored once; recorded requests refer to them as {"$text": id}.
    "CREATE TABLE texts (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        text TEXT NOT NULL
    );",
    // 4: a step's long thought or answer text is a row of `texts` too (a model that repeats
    // megabytes of reasoning every step stored them twice a step).
    "ALTER TABLE steps ADD COLUMN thought_ref INTEGER REFERENCES texts(id);
     ALTER TABLE steps ADD COLUMN text_ref INTEGER REFERENCES texts(id);",
];

/// The schema version with `steps.thought_ref` and `steps.text_ref`.
const SCHEMA_STEP_TEXT_REFS: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "{path} is not a usable selfagent recording ({error}); nothing was changed: move it aside or pass another --db"
    )]
    Corrupt { path: String, error: String },
    #[error("{path} was written by a newer selfagent (schema {found}, this one knows {known})")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("recording {path}: {error}")]
    Sql { path: String, error: String },
    #[error("no recording at {0} (run an episode first, or pass --db PATH)")]
    Missing(String),
    #[error("no session '{0}' in the recording (see `selfagent sessions ls`)")]
    NoSession(String),
    #[error("'{0}' matches several sessions; give more of the id")]
    Ambiguous(String),
    #[error("{0}")]
    Busy(String),
}

/// The one redaction every output uses (the transport's, for replies and errors, too).
pub use crate::model::redact;

/// A fresh session id: sortable by time, readable, unique enough (`20261122-045501-3fa9c1`).
pub fn new_session_id() -> String {
    let iso = crate::time::iso8601(crate::time::now_ms());
    let stamp: String = iso.chars().filter(char::is_ascii_digit).collect();
    format!(
        "{}-{}-{:06x}",
        &stamp[..8],
        &stamp[8..14],
        rand::random::<u32>() & 0xff_ffff
    )
}

/// One row of `sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub status: String,
    pub instruction: String,
    pub task_id: Option<String>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub protocol: Option<String>,
    pub image: Option<String>,
    pub sandbox: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub steps: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub wall_ms: Option<i64>,
    pub answer: Option<String>,
    pub error: Option<String>,
    pub meta: Value,
}

impl SessionRow {
    /// The coordinate space the model used (`native` for recordings older than the
    /// protocols, which knew no other).
    pub fn coords(&self) -> &str {
        self.meta["coords"].as_str().unwrap_or("native")
    }

    /// The protocol and coordinate space: `uitars/smart`.
    pub fn dialect(&self) -> String {
        format!(
            "{}/{}",
            self.protocol.as_deref().unwrap_or("tools"),
            self.coords()
        )
    }

    /// The model's price as recorded when the session started, if it was known.
    pub fn price(&self) -> Option<crate::model::price::Priced> {
        serde_json::from_value(self.meta.get("price")?.clone()).ok()
    }

    /// What the session's tokens cost, in dollars, where the price was known.
    pub fn cost(&self) -> Option<f64> {
        let p = self.price()?;
        Some(
            p.price
                .cost(self.tokens_in.max(0) as u64, self.tokens_out.max(0) as u64),
        )
    }
}

/// One row of `steps` (frames as ids).
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub idx: i64,
    pub started_at: i64,
    pub frame_before: Option<i64>,
    pub frame_after: Option<i64>,
    pub thought: Option<String>,
    pub text: Option<String>,
    pub actions: Value,
    pub error: Option<String>,
    pub model_ms: Option<f64>,
    pub act_ms: Option<f64>,
    pub settle_ms: Option<f64>,
    pub step_ms: Option<f64>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub at: i64,
    pub step: Option<i64>,
    pub kind: String,
    pub data: Option<String>,
}

/// What people (and the provider's safety checks) did at step `idx` of an episode whose last
/// recorded step is `last`, in words. Events before the first step count for the first;
/// those of a step never recorded (the one a stop cut short) count for the last.
pub fn notes_at(events: &[EventRow], idx: i64, last: i64) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            let at = e.step.unwrap_or(1).max(1);
            at == idx || (idx == last && at > last)
        })
        .filter_map(|e| crate::event::note(&e.kind, e.data.as_deref()))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct GradeRow {
    pub id: i64,
    pub grader: String,
    pub score: Option<f64>,
    pub passed: Option<bool>,
    pub details: Value,
    pub graded_at: i64,
}

/// A frame's pixels.
#[derive(Debug, Clone)]
pub struct FrameRow {
    pub id: i64,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub png: Vec<u8>,
}

/// An open recording.
pub struct Db {
    conn: Connection,
    path: String,
    read_only: bool,
    /// The schema version (a read-only open of an older recording keeps its own).
    schema: i64,
}

fn json_or_empty(s: Option<String>) -> Value {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// What a file turned out to be when it was opened.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// Empty, or not there yet: a new recording.
    Fresh,
    /// A recording, at this schema version.
    Ours(i64),
    /// Someone else's database, and why we think so.
    Foreign(String),
}

/// Tells a recording from a new file and from another program's database, reading only
/// (nothing is written, so a foreign file stays as it was).
fn classify(conn: &Connection) -> rusqlite::Result<Kind> {
    // One read transaction: the three answers come from the same state of the file, not
    // from before and after another process's migration.
    conn.execute_batch("BEGIN")?;
    let kind = classify_in(conn);
    let _ = conn.execute_batch("COMMIT");
    kind
}

fn classify_in(conn: &Connection) -> rusqlite::Result<Kind> {
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(if version < 0 {
        // Anyone can write any number there; no selfagent ever wrote a negative one.
        Kind::Foreign(format!(
            "its schema version is {version}, which no selfagent writes"
        ))
    } else if app == APPLICATION_ID {
        Kind::Ours(version)
    } else if app != 0 {
        Kind::Foreign(format!("its application id is {app:#x}"))
    } else if tables.is_empty() && version == 0 {
        Kind::Fresh
    } else if version >= 1
        && ["frames", "sessions", "steps"]
            .iter()
            .all(|t| tables.iter().any(|n| n == t))
    {
        // Recordings from before the application id was set.
        Kind::Ours(version)
    } else {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        Kind::Foreign(format!(
            "it holds other tables ({}) at schema version {version}",
            if shown.is_empty() {
                "none".into()
            } else {
                shown.join(", ")
            }
        ))
    })
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// `path` as an SQLite URI that opens it read-only without locking or WAL files (for a
/// recording on read-only media, whose `-shm` cannot be made).
fn immutable_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut uri = String::from("file:");
    for b in abs.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

impl Db {
    /// Opens (creating if needed) a recording for writing, brings its schema up to date,
    /// and marks the sessions of processes that died as `interrupted`. A file that is not
    /// a recording is refused and left byte for byte as it was. Several processes may open
    /// a new file at once: the schema is made in one exclusive transaction, and a busy
    /// database is waited for.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| RecordError::Sql {
                path: shown.clone(),
                error: format!("creating {}: {e}", dir.display()),
            })?;
        }
        let corrupt = |e: rusqlite::Error| RecordError::Corrupt {
            path: shown.clone(),
            error: e.to_string(),
        };
        let conn = Connection::open(path).map_err(corrupt)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(corrupt)?;
        // Reading first: a non-database, or another program's database, fails here, before
        // anything is written (not even the journal mode).
        let known = MIGRATIONS.len() as i64;
        match classify(&conn).map_err(corrupt)? {
            Kind::Foreign(why) => {
                return Err(RecordError::Corrupt {
                    path: shown,
                    error: format!("not a selfagent recording: {why}"),
                });
            }
            Kind::Ours(v) if v > known => {
                return Err(RecordError::TooNew {
                    path: shown,
                    found: v,
                    known,
                });
            }
            Kind::Fresh | Kind::Ours(_) => {}
        }
        // Switching to WAL takes an exclusive lock, and SQLite reports a lock held by a
        // process doing the same without waiting (it would deadlock): retry then.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            ) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(corrupt(e)),
            }
        }
        let mut db = Self {
            conn,
            path: shown,
            read_only: false,
            schema: MIGRATIONS.len() as i64,
        };
        db.migrate()?;
        db.mark_interrupted()?;
        Ok(db)
    }

    /// Opens an existing recording for reading only: nothing in it is changed (no
    /// migration, no journal mode, no `interrupted` marks; sessions of dead processes are
    /// shown as `interrupted` all the same). Works on read-only files and media.
    pub fn open_read(path: &Path) -> Result<Self, RecordError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(RecordError::Missing(shown));
        }
        let corrupt = |e: rusqlite::Error| RecordError::Corrupt {
            path: shown.clone(),
            error: e.to_string(),
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let checked = |conn: Connection| -> rusqlite::Result<(Connection, Kind)> {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            let kind = classify(&conn)?;
            Ok((conn, kind))
        };
        // A WAL recording needs its -shm file, which a read-only directory cannot hold:
        // then read it as an immutable file.
        let (conn, kind) = match Connection::open_with_flags(path, flags).and_then(checked) {
            Ok(opened) => opened,
            Err(_) => Connection::open_with_flags(immutable_uri(path), flags)
                .and_then(checked)
                .map_err(corrupt)?,
        };
        let known = MIGRATIONS.len() as i64;
        match kind {
            Kind::Foreign(why) => Err(RecordError::Corrupt {
                path: shown,
                error: format!("not a selfagent recording: {why}"),
            }),
            Kind::Ours(v) if v > known => Err(RecordError::TooNew {
                path: shown,
                found: v,
                known,
            }),
            Kind::Fresh => Ok(Self {
                conn,
                path: shown,
                read_only: true,
                schema: 0,
            }),
            Kind::Ours(v) => Ok(Self {
                conn,
                path: shown,
                read_only: true,
                schema: v,
            }),
        }
    }

    /// Applies the missing migrations in one exclusive transaction (another process may
    /// have applied them meanwhile: the version is read again inside it).
    fn migrate(&mut self) -> Result<(), RecordError> {
        let known = MIGRATIONS.len() as i64;
        let path = self.path.clone();
        let err = |e: rusqlite::Error| RecordError::Sql {
            path: path.clone(),
            error: format!("migrating: {e}"),
        };
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        let app: i64 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(err)?;
        if version == known && app == APPLICATION_ID {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(err)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version > known {
            return Err(RecordError::TooNew {
                path: path.clone(),
                found: version,
                known,
            });
        }
        let missing = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v..))
            .ok_or_else(|| RecordError::Corrupt {
                path: path.clone(),
                error: format!("its schema version is {version}, which no selfagent writes"),
            })?;
        for sql in missing {
            tx.execute_batch(sql).map_err(err)?;
        }
        tx.pragma_update(None, "user_version", known).map_err(err)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn sql(&self, e: rusqlite::Error) -> RecordError {
        db_err(&self.path, e)
    }

    /// Sessions still `running` whose process is gone become `interrupted`.
    fn mark_interrupted(&mut self) -> Result<(), RecordError> {
        let running: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, meta FROM sessions WHERE status = 'running'")
                .map_err(|e| self.sql(e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.sql(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sql(e))?
        };
        for (id, meta) in running {
            let owner = serde_json::from_str::<Value>(&meta)
                .ok()
                .and_then(|m| m["owner"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if owner.is_empty() || crate::process::owner_gone(&owner) {
                self.conn
                    .execute(
                        "UPDATE sessions SET status = 'interrupted', ended_at = ?2,
                         error = COALESCE(error, 'the selfagent process ended before the episode did')
                         WHERE id = ?1 AND status = 'running'",
                        params![id, crate::time::now_ms()],
                    )
                    .map_err(|e| self.sql(e))?;
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// A row as it stands: a session still `running` whose process is gone is shown as
    /// `interrupted` (a read-only recording cannot be marked so).
    fn as_it_stands(&self, mut row: SessionRow) -> SessionRow {
        if self.read_only && row.status == "running" {
            let owner = row.meta["owner"].as_str().unwrap_or_default();
            if owner.is_empty() || crate::process::owner_gone(owner) {
                row.status = "interrupted".into();
            }
        }
        row
    }

    /// Deletes a session and everything recorded for it (steps, events, grades, final
    /// state) in one transaction. Its frames go too, except those another session also
    /// refers to (identical screenshots are stored once). Long texts stay (shared texts
    /// cannot be told apart cheaply, and they are small). Returns the frames removed and
    /// kept. A running session is refused.
    pub fn delete_session(&mut self, id: &str) -> Result<(usize, usize), RecordError> {
        let session = self.session(id)?;
        if session.status == "running" {
            return Err(RecordError::Busy(format!(
                "session {} is still running",
                session.id
            )));
        }
        let id = session.id;
        let path = self.path.clone();
        let err = |e: rusqlite::Error| db_err(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        let mut candidates: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();
        {
            let mut stmt = tx
                .prepare(
                    "SELECT frame_before, frame_after, COALESCE(request, ''), actions,
                     json_extract(meta, '$.rerun.expected_frame') FROM steps WHERE session_id = ?1",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([&id], |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(err)?;
            for row in rows {
                let (before, after, request, actions, expected) = row.map_err(err)?;
                candidates.extend(before.into_iter().chain(after).chain(expected));
                // Screenshots in recorded requests: "frame:ID".
                for part in request.split("\"frame:").skip(1) {
                    if let Some(n) = part.split('"').next().and_then(|n| n.parse().ok()) {
                        candidates.insert(n);
                    }
                }
                // Zoom images of actions: {"image": ID}.
                if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&actions) {
                    candidates.extend(list.iter().filter_map(|a| a["image"].as_i64()));
                }
            }
        }
        for table in ["steps", "events", "grades", "final_states"] {
            tx.execute(&format!("DELETE FROM {table} WHERE session_id = ?1"), [&id])
                .map_err(err)?;
        }
        tx.execute("DELETE FROM sessions WHERE id = ?1", [&id])
            .map_err(err)?;
        let (mut removed, mut kept) = (0, 0);
        for frame in candidates {
            let marker = format!("\"frame:{frame}\"");
            let used: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM steps WHERE frame_before = ?1 OR frame_after = ?1
                        OR instr(request, ?2) > 0
                        OR json_extract(meta, '$.rerun.expected_frame') = ?1
                        OR EXISTS (SELECT 1 FROM json_each(steps.actions) WHERE json_extract(value, '$.image') = ?1))",
                    rusqlite::params![frame, marker],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if used {
                kept += 1;
            } else {
                removed += tx
                    .execute("DELETE FROM frames WHERE id = ?1", [frame])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok((removed, kept))
    }

    /// Sessions, newest first.
    pub fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, RecordError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{SESSION_COLUMNS} ORDER BY created_at DESC LIMIT ?1"
            ))
            .map_err(|e| self.sql(e))?;
        stmt.query_map([limit as i64], session_row)
            .map_err(|e| self.sql(e))?
            .map(|r| r.map(|row| self.as_it_stands(row)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))
    }

    /// A session by id or unique id prefix.
    pub fn session(&self, id: &str) -> Result<SessionRow, RecordError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{SESSION_COLUMNS} WHERE id = ?1 OR id LIKE ?2 ESCAPE '\\' LIMIT 2"
            ))
            .map_err(|e| self.sql(e))?;
        let pattern = format!(
            "{}%",
            id.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows: Vec<SessionRow> = stmt
            .query_map(params![id, pattern], session_row)
            .map_err(|e| self.sql(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        let rows: Vec<SessionRow> = rows.into_iter().map(|r| self.as_it_stands(r)).collect();
        match rows.len() {
            0 => Err(RecordError::NoSession(id.to_owned())),
            1 => Ok(rows
                .into_iter()
                .next()
                .ok_or_else(|| RecordError::NoSession(id.to_owned()))?),
            _ => rows
                .into_iter()
                .find(|r| r.id == id)
                .ok_or_else(|| RecordError::Ambiguous(id.to_owned())),
        }
    }

    pub fn steps(&self, session: &str) -> Result<Vec<StepRow>, RecordError> {
        let sql = if self.schema >= SCHEMA_STEP_TEXT_REFS {
            "SELECT s.idx, s.started_at, s.frame_before, s.frame_after,
                    COALESCE(s.thought, t1.text), COALESCE(s.text, t2.text), s.actions, s.error,
                    s.model_ms, s.act_ms, s.settle_ms, s.step_ms, s.tokens_in, s.tokens_out, s.meta
             FROM steps s LEFT JOIN texts t1 ON t1.id = s.thought_ref
                          LEFT JOIN texts t2 ON t2.id = s.text_ref
             WHERE s.session_id = ?1 ORDER BY s.idx"
        } else {
            "SELECT idx, started_at, frame_before, frame_after, thought, text, actions, error,
                    model_ms, act_ms, settle_ms, step_ms, tokens_in, tokens_out, meta
             FROM steps WHERE session_id = ?1 ORDER BY idx"
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql(e))?;
        stmt.query_map([session], |r| {
            Ok(StepRow {
                idx: r.get(0)?,
                started_at: r.get(1)?,
                frame_before: r.get(2)?,
                frame_after: r.get(3)?,
                thought: r.get(4)?,
                text: r.get(5)?,
                actions: json_or_empty(r.get(6)?),
                error: r.get(7)?,
                model_ms: r.get(8)?,
                act_ms: r.get(9)?,
                settle_ms: r.get(10)?,
                step_ms: r.get(11)?,
                tokens_in: r.get(12)?,
                tokens_out: r.get(13)?,
                meta: json_or_empty(r.get(14)?),
            })
        })
        .map_err(|e| self.sql(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.sql(e))
    }

    /// The recorded request and response of one step, with shared texts filled in.
    pub fn exchange(&self, session: &str, idx: i64) -> Result<(Value, Value), RecordError> {
        let (mut request, mut response) = self
            .conn
            .query_row(
                "SELECT request, response FROM steps WHERE session_id = ?1 AND idx = ?2",
                params![session, idx],
                |r| Ok((json_or_empty(r.get(0)?), json_or_empty(r.get(1)?))),
            )
            .map_err(|e| self.sql(e))?;
        self.fill_texts(&mut request)?;
        self.fill_texts(&mut response)?;
        Ok((request, response))
    }

    /// Replaces `{"$text": id}` references with the texts they name.
    fn fill_texts(&self, v: &mut Value) -> Result<(), RecordError> {
        match v {
            Value::Object(map) => {
                if map.len() == 1
                    && let Some(id) = map.get(TEXT_REF).and_then(Value::as_i64)
                {
                    let text: String = self
                        .conn
                        .prepare_cached("SELECT text FROM texts WHERE id = ?1")
                        .and_then(|mut st| st.query_row([id], |r| r.get(0)))
                        .map_err(|e| self.sql(e))?;
                    *v = Value::String(text);
                    return Ok(());
                }
                for item in map.values_mut() {
                    self.fill_texts(item)?;
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.fill_texts(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn frame(&self, id: i64) -> Result<Option<FrameRow>, RecordError> {
        self.conn
            .query_row(
                "SELECT id, sha256, width, height, png FROM frames WHERE id = ?1",
                [id],
                |r| {
                    Ok(FrameRow {
                        id: r.get(0)?,
                        sha256: r.get(1)?,
                        width: r.get(2)?,
                        height: r.get(3)?,
                        png: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    pub fn events(&self, session: &str) -> Result<Vec<EventRow>, RecordError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at, step, kind, data FROM events WHERE session_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        stmt.query_map([session], |r| {
            Ok(EventRow {
                at: r.get(0)?,
                step: r.get(1)?,
                kind: r.get(2)?,
                data: r.get(3)?,
            })
        })
        .map_err(|e| self.sql(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.sql(e))
    }

    pub fn grades(&self, session: &str) -> Result<Vec<GradeRow>, RecordError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, grader, score, passed, details, graded_at FROM grades
                 WHERE session_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql(e))?;
        stmt.query_map([session], |r| {
            Ok(GradeRow {
                id: r.get(0)?,
                grader: r.get(1)?,
                score: r.get(2)?,
                passed: r.get::<_, Option<i64>>(3)?.map(|p| p != 0),
                details: json_or_empty(r.get(4)?),
                graded_at: r.get(5)?,
            })
        })
        .map_err(|e| self.sql(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.sql(e))
    }

    /// Adds a grade to a session's history (older grades stay).
    pub fn insert_grade(&self, session: &str, grade: &Grade) -> Result<i64, RecordError> {
        let details = serde_json::to_string(grade).map_err(|e| RecordError::Sql {
            path: self.path.clone(),
            error: e.to_string(),
        })?;
        self.conn
            .execute(
                "INSERT INTO grades (session_id, grader, score, passed, details, graded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    session,
                    GRADER,
                    grade.score,
                    grade.passed.map(i64::from),
                    details,
                    crate::time::now_ms()
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The newest grade of a session, if any.
    pub fn latest_grade(&self, session: &str) -> Result<Option<GradeRow>, RecordError> {
        Ok(self.grades(session)?.pop())
    }

    /// Keeps what the checks read at the end of an episode.
    pub fn insert_final_state(&self, session: &str, state: &FinalState) -> Result<(), RecordError> {
        let text = serde_json::to_string(state).map_err(|e| RecordError::Sql {
            path: self.path.clone(),
            error: e.to_string(),
        })?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO final_states (session_id, snapshot, state, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![session, state.snapshot, text, crate::time::now_ms()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// What the checks read at the end of a session, if it was kept.
    pub fn final_state(&self, session: &str) -> Result<Option<FinalState>, RecordError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM final_states WHERE session_id = ?1",
                [session],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| RecordError::Corrupt {
                path: self.path.clone(),
                error: format!("the final state of {session} is not readable: {e}"),
            })
        })
        .transpose()
    }

    /// Sessions of tasks (those with a task id), newest first.
    pub fn task_sessions(&self) -> Result<Vec<SessionRow>, RecordError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{SESSION_COLUMNS} WHERE task_id IS NOT NULL ORDER BY created_at DESC"
            ))
            .map_err(|e| self.sql(e))?;
        stmt.query_map([], session_row)
            .map_err(|e| self.sql(e))?
            .map(|r| r.map(|row| self.as_it_stands(row)))
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))
    }

    fn insert_frame(&self, frame: &Frame) -> Result<i64, rusqlite::Error> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO frames (sha256, width, height, png) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                frame.sha256,
                frame.width,
                frame.height,
                frame.png.as_slice()
            ])?;
        self.conn
            .prepare_cached("SELECT id FROM frames WHERE sha256 = ?1")?
            .query_row([&frame.sha256], |r| r.get(0))
    }
}

fn db_err(path: &str, e: rusqlite::Error) -> RecordError {
    RecordError::Sql {
        path: path.to_owned(),
        error: e.to_string(),
    }
}

const SESSION_COLUMNS: &str =
    "SELECT id, created_at, ended_at, status, instruction, task_id, model,
    base_url, protocol, image, sandbox, width, height, steps, tokens_in, tokens_out, wall_ms,
    answer, error, meta FROM sessions";

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        ended_at: r.get(2)?,
        status: r.get(3)?,
        instruction: r.get(4)?,
        task_id: r.get(5)?,
        model: r.get(6)?,
        base_url: r.get(7)?,
        protocol: r.get(8)?,
        image: r.get(9)?,
        sandbox: r.get(10)?,
        width: r.get(11)?,
        height: r.get(12)?,
        steps: r.get(13)?,
        tokens_in: r.get(14)?,
        tokens_out: r.get(15)?,
        wall_ms: r.get(16)?,
        answer: r.get(17)?,
        error: r.get(18)?,
        meta: json_or_empty(r.get(19)?),
    })
}

/// What the writer did, for `bench` and the end of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecorderStats {
    pub steps: u64,
    /// Milliseconds to write each finished step (its row, frame, totals; one transaction).
    pub step_write_ms: Vec<f64>,
    /// The database's size on disk when the writer finished.
    pub db_bytes: u64,
    /// Set when writing failed; later events were dropped.
    pub error: Option<String>,
}

/// Step data gathered from events until the step finishes.
#[derive(Default)]
struct PendingStep {
    started_at: i64,
    frame_before: Option<i64>,
    request: Option<String>,
    response: Option<String>,
    thought: Option<String>,
    text: Option<String>,
    actions: Vec<Value>,
    errors: Vec<String>,
    model_ms: Option<f64>,
    act_ms: f64,
    settle_ms: Option<f64>,
    tokens_in: u64,
    tokens_out: u64,
    meta: serde_json::Map<String, Value>,
}

struct Writer {
    db: Db,
    secrets: Vec<String>,
    session: Option<String>,
    pending: HashMap<u32, PendingStep>,
    frames: HashMap<String, i64>,
    texts: HashMap<String, i64>,
    stats: RecorderStats,
}

impl Writer {
    fn redact(&self, s: &str) -> String {
        redact(s, &self.secrets)
    }

    /// A row of `events` for the current session (none before it started).
    fn insert_event(
        &self,
        step: Option<u32>,
        kind: &str,
        data: Option<String>,
    ) -> rusqlite::Result<()> {
        if let Some(session) = &self.session {
            self.db.conn.execute(
                "INSERT INTO events (session_id, at, step, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![session, crate::time::now_ms(), step, kind, data],
            )?;
        }
        Ok(())
    }

    /// A copy of `value` with every secret redacted from its JSON form.
    fn redacted<T: Serialize + serde::de::DeserializeOwned + Clone>(&self, value: &T) -> T {
        serde_json::to_string(value)
            .ok()
            .and_then(|text| serde_json::from_str(&self.redact(&text)).ok())
            .unwrap_or_else(|| value.clone())
    }

    fn frame_id(&mut self, frame: &Frame) -> Result<i64, rusqlite::Error> {
        if let Some(id) = self.frames.get(&frame.sha256) {
            return Ok(*id);
        }
        let id = self.db.insert_frame(frame)?;
        self.frames.insert(frame.sha256.clone(), id);
        Ok(id)
    }

    /// The row of `texts` holding `text` (added the first time).
    fn text_id(&mut self, text: &str) -> Result<i64, rusqlite::Error> {
        let sha = crate::event::sha256_hex(text.as_bytes());
        if let Some(id) = self.texts.get(&sha) {
            return Ok(*id);
        }
        self.db
            .conn
            .prepare_cached("INSERT OR IGNORE INTO texts (sha256, text) VALUES (?1, ?2)")?
            .execute(params![sha, text])?;
        let id: i64 = self
            .db
            .conn
            .prepare_cached("SELECT id FROM texts WHERE sha256 = ?1")?
            .query_row([&sha], |r| r.get(0))?;
        self.texts.insert(sha, id);
        Ok(id)
    }

    /// A step's text column: the text itself, or (when long) a reference to `texts`.
    fn column_text(
        &mut self,
        text: Option<String>,
    ) -> Result<(Option<String>, Option<i64>), rusqlite::Error> {
        match text {
            Some(t) if t.len() >= SHARED_TEXT => Ok((None, Some(self.text_id(&t)?))),
            other => Ok((other, None)),
        }
    }

    /// Long strings become `{"$text": id}` references to rows of `texts`, each stored once.
    fn share_texts(&mut self, v: &mut Value) -> Result<(), rusqlite::Error> {
        match v {
            Value::String(text) if text.len() >= SHARED_TEXT => {
                let id = self.text_id(text)?;
                *v = json!({ TEXT_REF: id });
            }
            Value::Array(items) => {
                for item in items {
                    self.share_texts(item)?;
                }
            }
            Value::Object(map) => {
                for item in map.values_mut() {
                    self.share_texts(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A request or response as stored: secrets redacted, long texts shared.
    fn stored_json(&mut self, v: &Value) -> Result<String, rusqlite::Error> {
        let mut clean: Value =
            serde_json::from_str(&self.redact(&v.to_string())).unwrap_or(Value::Null);
        self.share_texts(&mut clean)?;
        Ok(clean.to_string())
    }

    /// `sha256:<hex>` image references become `frame:<id>`.
    fn frame_refs(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Some(sha) = s.strip_prefix("sha256:")
                    && let Some(id) = self.frames.get(sha)
                {
                    *s = format!("frame:{id}");
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.frame_refs(i)),
            Value::Object(map) => map.values_mut().for_each(|i| self.frame_refs(i)),
            _ => {}
        }
    }

    fn handle(&mut self, event: &Event) -> Result<(), rusqlite::Error> {
        match event {
            Event::SessionStarted(info) => self.start_session(info)?,
            Event::StepStarted { step } => {
                self.pending.insert(
                    *step,
                    PendingStep {
                        started_at: crate::time::now_ms(),
                        ..Default::default()
                    },
                );
            }
            Event::Observation { step, frame } => {
                let id = self.frame_id(frame)?;
                self.pending.entry(*step).or_default().frame_before = Some(id);
            }
            Event::ModelRetry {
                step,
                attempt,
                error,
                wait_ms,
            } => {
                let error = self.redact(error);
                let p = self.pending.entry(*step).or_default();
                let retries = p.meta.entry("retries").or_insert_with(|| json!([]));
                if let Some(list) = retries.as_array_mut() {
                    list.push(json!({"attempt": attempt, "error": error, "wait_ms": wait_ms}));
                }
            }
            Event::ModelReply {
                step,
                thought,
                text,
                usage,
                model_ms,
                attempts,
                exchange,
                ..
            } => {
                let (request, response) = match exchange {
                    Some(x) => {
                        let mut req = x.request.clone();
                        self.frame_refs(&mut req);
                        (
                            Some(self.stored_json(&req)?),
                            Some(self.stored_json(&x.response)?),
                        )
                    }
                    None => (None, None),
                };
                let thought = thought.as_deref().map(|t| self.redact(t));
                let text = text.as_deref().map(|t| self.redact(t));
                let p = self.pending.entry(*step).or_default();
                p.request = request;
                p.response = response;
                p.thought = thought;
                p.text = text;
                p.model_ms = Some(*model_ms);
                p.tokens_in = usage.input;
                p.tokens_out = usage.output;
                p.meta.insert("attempts".into(), json!(attempts));
            }
            Event::Grounded {
                step,
                index,
                element,
                point,
                error,
                model,
                usage,
                model_ms,
                exchange,
            } => {
                let mut entry = json!({
                    "index": index,
                    "element": self.redact(element),
                    "model": model,
                    "tokens_in": usage.input,
                    "tokens_out": usage.output,
                    "model_ms": model_ms,
                });
                if let Some(p) = point {
                    entry["point"] = json!(p);
                }
                if let Some(e) = error {
                    entry["error"] = json!(self.redact(e));
                }
                if let Some(x) = exchange {
                    let mut req = x.request.clone();
                    self.frame_refs(&mut req);
                    let clean = |v: &Value| {
                        serde_json::from_str::<Value>(&self.redact(&v.to_string()))
                            .unwrap_or(Value::Null)
                    };
                    entry["request"] = clean(&req);
                    entry["response"] = clean(&x.response);
                }
                let p = self.pending.entry(*step).or_default();
                p.tokens_in += usage.input;
                p.tokens_out += usage.output;
                match p.meta.get_mut("grounding").and_then(Value::as_array_mut) {
                    Some(list) => list.push(entry),
                    None => {
                        p.meta.insert("grounding".into(), json!([entry]));
                    }
                }
            }
            Event::ActionDone {
                step,
                index,
                action,
                text,
                act_ms,
                image,
            } => {
                let image_id = image.as_ref().map(|f| self.frame_id(f)).transpose()?;
                let mut entry =
                    json!({"index": index, "ok": true, "action": action, "act_ms": act_ms});
                if let Some(t) = text {
                    entry["text"] = json!(self.redact(t));
                }
                if let Some(id) = image_id {
                    entry["image"] = json!(id);
                }
                let p = self.pending.entry(*step).or_default();
                p.act_ms += act_ms;
                p.actions.push(entry);
            }
            Event::ActionFailed {
                step,
                index,
                input,
                error,
            } => {
                let error = self.redact(error);
                let input = self.redact(&input.to_string());
                let p = self.pending.entry(*step).or_default();
                p.actions.push(json!({"index": index, "ok": false, "input": serde_json::from_str::<Value>(&input).unwrap_or(Value::String(input)), "error": error}));
                p.errors.push(error);
            }
            Event::StepError { step, error } => {
                let error = self.redact(error);
                self.pending.entry(*step).or_default().errors.push(error);
            }
            Event::Settled { step, report } => {
                let p = self.pending.entry(*step).or_default();
                p.settle_ms = Some(report.waited_ms);
                p.meta.insert("settle".into(), json!(report));
            }
            Event::StepMark {
                step,
                key,
                mark,
                expected,
            } => {
                let mut mark = mark.clone();
                if let Some(f) = expected {
                    let id = self.frame_id(f)?;
                    if let Some(m) = mark.as_object_mut() {
                        m.insert("expected_frame".into(), json!(id));
                    }
                }
                let mark: Value =
                    serde_json::from_str(&self.redact(&mark.to_string())).unwrap_or(Value::Null);
                self.pending
                    .entry(*step)
                    .or_default()
                    .meta
                    .insert(key.clone(), mark);
            }
            Event::StepFinished {
                step,
                frame,
                step_ms,
            } => self.finish_step(*step, frame, *step_ms)?,
            // What the loop waits for is shown live; the interventions that cause it are recorded.
            Event::Paused { .. } | Event::AwaitingApproval { .. } => {}
            Event::SafetyCheck {
                step,
                checks,
                acknowledged,
            } => {
                let data = json!({"checks": checks, "acknowledged": acknowledged}).to_string();
                self.insert_event(Some(*step), "safety_check", Some(self.redact(&data)))?;
            }
            Event::Calibration(report) => {
                let data = self.redact(&report.to_string());
                self.insert_event(None, "calibration", Some(data))?;
            }
            Event::NeedsUser { step, question } => {
                let data = question.as_deref().map(|q| self.redact(q));
                self.insert_event(Some(*step), "needs_user", data)?;
            }
            Event::TakeOverView { step, vnc, .. } => {
                self.insert_event(Some(*step), "take_over_recorded", Some(vnc.clone()))?;
            }
            Event::Intervention { step, kind, text } => {
                let data = text.as_deref().map(|t| self.redact(t));
                self.insert_event(Some(*step), kind, data)?;
            }
            Event::Setup {
                phase,
                index,
                total,
                step,
                ms,
                error,
            } => {
                let data = json!({"index": index, "total": total, "step": self.redact(step), "ms": ms, "error": error.as_deref().map(|e| self.redact(e))});
                self.insert_event(None, phase, Some(data.to_string()))?;
            }
            Event::Graded { grade, state } => {
                if let Some(session) = self.session.clone() {
                    self.db.conn.execute_batch("BEGIN")?;
                    // Outputs and files the checks read pass through redaction too.
                    let grade: Grade = self.redacted(grade);
                    let state: Option<FinalState> = state.as_ref().map(|s| self.redacted(s));
                    let written = (|| {
                        if let Some(state) = &state {
                            self.db.insert_final_state(&session, state)?;
                        }
                        self.db.insert_grade(&session, &grade)?;
                        Ok::<(), RecordError>(())
                    })();
                    match written {
                        Ok(()) => self.db.conn.execute_batch("COMMIT")?,
                        Err(e) => {
                            let _ = self.db.conn.execute_batch("ROLLBACK");
                            return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
                        }
                    }
                }
            }
            Event::Finished(outcome) => {
                if let Some(session) = &self.session {
                    self.db.conn.execute(
                        "UPDATE sessions SET status = ?2, ended_at = ?3, answer = ?4, error = ?5, wall_ms = ?6,
                         tokens_in = ?7, tokens_out = ?8, meta = json_set(meta, '$.ended_by', ?9) WHERE id = ?1",
                        params![
                            session,
                            outcome.status.as_str(),
                            crate::time::now_ms(),
                            outcome.answer.as_deref().map(|a| self.redact(a)),
                            outcome.error.as_deref().map(|e| self.redact(e)),
                            outcome.wall_ms as i64,
                            outcome.tokens_in as i64,
                            outcome.tokens_out as i64,
                            serde_json::to_value(outcome.ended_by).ok().and_then(|v| v.as_str().map(str::to_owned)),
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    fn start_session(&mut self, info: &SessionInfo) -> Result<(), rusqlite::Error> {
        let meta = json!({
            "owner": crate::process::owner_token(),
            "sent_width": info.sent_width,
            "sent_height": info.sent_height,
            "coords": info.coords,
            "max_steps": info.max_steps,
            "timeout_s": info.timeout_s,
            "selfagent": env!("CARGO_PKG_VERSION"),
        });
        let mut meta = meta;
        if !info.engine.is_empty() {
            meta["engine"] = json!(info.engine);
        }
        if let Some(price) = &info.price {
            meta["price"] = json!(price);
        }
        if let Some(source) = &info.source {
            meta["source"] = json!(source);
        }
        if let Some(of) = &info.rerun_of {
            meta["rerun_of"] = json!(of);
        }
        if let Some(task) = &info.task {
            meta["task"] =
                serde_json::from_str(&self.redact(&task.to_string())).unwrap_or(Value::Null);
        }
        self.db.conn.execute(
            "INSERT INTO sessions (id, created_at, status, instruction, task_id, model, base_url, protocol,
             image, sandbox, width, height, meta)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                info.session,
                crate::time::now_ms(),
                self.redact(&info.instruction),
                info.task_id,
                info.model,
                crate::model::redact_url(&info.base_url),
                info.protocol,
                info.image,
                info.sandbox,
                info.width,
                info.height,
                meta.to_string(),
            ],
        )?;
        self.session = Some(info.session.clone());
        Ok(())
    }

    /// Writes a finished step, its frame and the session's totals in one transaction.
    fn finish_step(
        &mut self,
        step: u32,
        frame: &Frame,
        step_ms: f64,
    ) -> Result<(), rusqlite::Error> {
        let t = Instant::now();
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        let p = self.pending.remove(&step).unwrap_or_default();
        self.db.conn.execute_batch("BEGIN")?;
        match self.write_step(&session, step, p, frame, step_ms) {
            Ok(()) => self.db.conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = self.db.conn.execute_batch("ROLLBACK");
                // The id caches may name rows the rollback removed.
                self.frames.clear();
                self.texts.clear();
                return Err(e);
            }
        }
        self.stats.steps += 1;
        self.stats
            .step_write_ms
            .push(t.elapsed().as_secs_f64() * 1000.0);
        Ok(())
    }

    fn write_step(
        &mut self,
        session: &str,
        step: u32,
        p: PendingStep,
        frame: &Frame,
        step_ms: f64,
    ) -> Result<(), rusqlite::Error> {
        let after = self.frame_id(frame)?;
        let (thought, thought_ref) = self.column_text(p.thought)?;
        let (text, text_ref) = self.column_text(p.text)?;
        self.db
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO steps (session_id, idx, started_at, frame_before, frame_after, request,
                 response, thought, text, actions, error, model_ms, act_ms, settle_ms, step_ms, tokens_in,
                 tokens_out, meta, thought_ref, text_ref)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                session,
                step,
                p.started_at,
                p.frame_before,
                after,
                p.request,
                p.response,
                thought,
                text,
                Value::Array(p.actions).to_string(),
                (!p.errors.is_empty()).then(|| p.errors.join("; ")),
                p.model_ms,
                p.act_ms,
                p.settle_ms,
                step_ms,
                p.tokens_in as i64,
                p.tokens_out as i64,
                Value::Object(p.meta).to_string(),
                thought_ref,
                text_ref,
            ])?;
        self.db
            .conn
            .prepare_cached(
                "UPDATE sessions SET steps = MAX(steps, ?2), tokens_in = tokens_in + ?3, tokens_out = tokens_out + ?4
                 WHERE id = ?1",
            )?
            .execute(params![session, step, p.tokens_in as i64, p.tokens_out as i64])?;
        Ok(())
    }
}

/// The recording writer (see the module docs).
pub struct Recorder {
    thread: Option<std::thread::JoinHandle<RecorderStats>>,
    path: PathBuf,
    failed: tokio::sync::watch::Receiver<Option<String>>,
}

impl Recorder {
    /// Opens the recording (so a bad file fails before anything starts) and starts the
    /// writer on `events`. `secrets` are redacted from everything written.
    pub fn start(
        path: &Path,
        secrets: Vec<String>,
        mut events: mpsc::Receiver<Arc<Event>>,
    ) -> Result<Self, RecordError> {
        let db = Db::open(path)?;
        let path_buf = path.to_owned();
        let (failed_tx, failed) = tokio::sync::watch::channel(None);
        let thread = std::thread::Builder::new()
            .name("selfagent-recorder".into())
            .spawn(move || {
                let mut writer = Writer {
                    db,
                    secrets,
                    session: None,
                    pending: HashMap::new(),
                    frames: HashMap::new(),
                    texts: HashMap::new(),
                    stats: RecorderStats::default(),
                };
                while let Some(event) = events.blocking_recv() {
                    if writer.stats.error.is_some() {
                        // After a failure only the end is tried (a full disk may still
                        // take an update in place); the rest is not recorded.
                        if matches!(&*event, Event::Finished(_)) {
                            let _ = writer.handle(&event);
                        }
                        continue;
                    }
                    if let Err(e) = writer.handle(&event) {
                        tracing::debug!("recording to {}: {e}", writer.db.path);
                        let message = format!("writing {}: {e}", writer.db.path);
                        writer.stats.error = Some(message.clone());
                        let _ = failed_tx.send(Some(message));
                    }
                }
                let _ = writer
                    .db
                    .conn
                    .execute_batch("PRAGMA wal_checkpoint(PASSIVE);");
                writer.stats.db_bytes = std::fs::metadata(&writer.db.path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                writer.stats
            })
            .map_err(|e| RecordError::Sql {
                path: path.display().to_string(),
                error: e.to_string(),
            })?;
        Ok(Self {
            thread: Some(thread),
            path: path_buf,
            failed,
        })
    }

    /// Resolves with the error once writing has failed (a full disk, a removed file): an
    /// episode that cannot be recorded must stop.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the writer to drain its queue (the event channel must be closed: drop the
    /// emitter) and returns what it did.
    pub async fn finish(mut self) -> RecorderStats {
        let Some(thread) = self.thread.take() else {
            return RecorderStats::default();
        };
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Exchange, Outcome, SessionInfo, Status};
    use crate::model::Usage;
    use pretty_assertions::assert_eq;

    fn info(id: &str) -> SessionInfo {
        SessionInfo {
            session: id.into(),
            sandbox: "abc".into(),
            instruction: "do it with sk-secret-key".into(),
            task_id: None,
            model: "m".into(),
            base_url: "http://u:p@host/v1".into(),
            protocol: "tools".into(),
            coords: "native".into(),
            image: "img".into(),
            engine: String::new(),
            width: 4,
            height: 2,
            sent_width: 4,
            sent_height: 2,
            max_steps: 5,
            timeout_s: 60.0,
            task: None,
            price: None,
            source: None,
            rerun_of: None,
        }
    }

    fn frame(byte: u8) -> Frame {
        Frame::new(Arc::new(vec![byte; 10]), 4, 2)
    }

    async fn record(path: &Path, events: Vec<Event>) -> RecorderStats {
        let (tx, rx) = mpsc::channel(16);
        let rec = Recorder::start(path, vec!["sk-secret-key".into()], rx).unwrap();
        for e in events {
            tx.send(Arc::new(e)).await.unwrap();
        }
        drop(tx);
        rec.finish().await
    }

    fn step_events(step: u32, before: &Frame, after: &Frame) -> Vec<Event> {
        vec![
            Event::StepStarted { step },
            Event::Observation {
                step,
                frame: before.clone(),
            },
            Event::ModelReply {
                step,
                thought: Some("think".into()),
                text: None,
                calls: vec![],
                usage: Usage {
                    input: 10,
                    output: 2,
                    ..Usage::default()
                },
                model_ms: 5.0,
                attempts: 1,
                exchange: Some(Arc::new(Exchange {
                    request: json!({"messages": [{"content": [{"image_url": {"url": format!("sha256:{}", before.sha256)}}]}], "key": "sk-secret-key"}),
                    response: json!({"choices": []}),
                })),
            },
            Event::ActionDone {
                step,
                index: 0,
                action: crate::action::Action::Wait { duration: 0.0 },
                text: None,
                act_ms: 1.5,
                image: None,
            },
            Event::StepFinished {
                step,
                frame: after.clone(),
                step_ms: 9.0,
            },
        ]
    }

    #[tokio::test]
    async fn deleting_a_session_keeps_the_frames_another_one_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let (a, b, c) = (frame(1), frame(2), frame(3));
        let end = || {
            Event::Finished(Outcome {
                status: Status::Failed,
                ended_by: crate::agent::EndedBy::Model,
                answer: None,
                error: Some("no".into()),
                steps: 1,
                tokens_in: 10,
                tokens_out: 2,
                wall_ms: 10,
                cost: None,
            })
        };
        let mut events = vec![Event::SessionStarted(info("s1"))];
        events.extend(step_events(1, &a, &b));
        events.push(end());
        events.push(Event::SessionStarted(info("s2")));
        events.extend(step_events(1, &b, &c));
        events.push(end());
        record(&path, events).await;
        let mut running = vec![Event::SessionStarted(info("s3"))];
        running.extend(step_events(1, &c, &c));
        record(&path, running).await;

        let mut db = Db::open(&path).unwrap();
        let frames = |db: &Db| -> i64 {
            db.conn
                .query_row("SELECT COUNT(*) FROM frames", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(frames(&db), 3);
        // s1 alone showed a; b is s2's first screen too.
        assert_eq!(db.delete_session("s1").unwrap(), (1, 1));
        assert_eq!(frames(&db), 2);
        assert!(matches!(db.session("s1"), Err(RecordError::NoSession(_))));
        let s2 = db.steps("s2").unwrap();
        for id in [s2[0].frame_before, s2[0].frame_after] {
            assert!(db.frame(id.unwrap()).unwrap().is_some(), "s2 lost a frame");
        }
        // A session still being recorded is left alone.
        assert!(matches!(db.delete_session("s3"), Err(RecordError::Busy(_))));
        assert_eq!(db.steps("s3").unwrap().len(), 1);
    }

    #[tokio::test]
    async fn steps_frames_and_totals_are_recorded_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let (a, b) = (frame(1), frame(2));
        let mut events = vec![Event::SessionStarted(info("s1"))];
        events.extend(step_events(1, &a, &b));
        events.extend(step_events(2, &b, &b));
        events.push(Event::Finished(Outcome {
            status: Status::Succeeded,
            ended_by: crate::agent::EndedBy::Model,
            answer: Some("42".into()),
            error: None,
            steps: 2,
            tokens_in: 20,
            tokens_out: 4,
            wall_ms: 100,
            cost: None,
        }));
        let stats = record(&path, events).await;
        assert_eq!((stats.steps, stats.error), (2, None));

        let db = Db::open(&path).unwrap();
        let s = db.session("s1").unwrap();
        assert_eq!(
            (s.status.as_str(), s.steps, s.tokens_in, s.answer.as_deref()),
            ("succeeded", 2, 20, Some("42"))
        );
        assert_eq!(s.base_url.as_deref(), Some("http://host/v1"));
        assert!(!s.instruction.contains("sk-secret-key"));
        let steps = db.steps("s1").unwrap();
        assert_eq!(steps.len(), 2);
        // Two distinct PNGs, stored once each.
        assert_ne!(steps[0].frame_before, steps[0].frame_after);
        assert_eq!(steps[0].frame_after, steps[1].frame_before);
        assert_eq!(
            db.frame(steps[0].frame_after.unwrap())
                .unwrap()
                .unwrap()
                .png,
            vec![2; 10]
        );
        let (request, _) = db.exchange("s1", 1).unwrap();
        let url = request["messages"][0]["content"][0]["image_url"]["url"]
            .as_str()
            .unwrap();
        assert_eq!(url, format!("frame:{}", steps[0].frame_before.unwrap()));
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"sk-secret-key"),
            "the key reached the file"
        );
    }

    #[tokio::test]
    async fn sessions_of_dead_processes_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let (a, b) = (frame(1), frame(2));
        let mut events = vec![Event::SessionStarted(info("s2"))];
        events.extend(step_events(1, &a, &b));
        record(&path, events).await;
        // Our own session stays running while we live...
        assert_eq!(
            Db::open(&path).unwrap().session("s2").unwrap().status,
            "running"
        );
        // ...and becomes interrupted once its owner is gone.
        let me = crate::process::owner_token();
        let (boot_pid, _) = me.rsplit_once('/').unwrap();
        let dead = format!("{boot_pid}/1");
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE sessions SET meta = json_set(meta, '$.owner', ?1)",
            [dead],
        )
        .unwrap();
        drop(conn);
        let s = Db::open(&path).unwrap().session("s2").unwrap();
        assert_eq!((s.status.as_str(), s.steps), ("interrupted", 1));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        std::fs::write(&path, b"this is not sqlite, but it is someone's data").unwrap();
        let err = Db::open(&path).err().expect("an error").to_string();
        assert!(err.contains("not a usable selfagent recording"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is not sqlite, but it is someone's data"
        );
    }

    #[test]
    fn a_newer_schema_is_refused_and_an_old_one_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let newer = Connection::open(&path).unwrap();
        newer.pragma_update(None, "user_version", 99).unwrap();
        newer
            .pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        drop(newer);
        assert!(matches!(
            Db::open(&path),
            Err(RecordError::TooNew { found: 99, .. })
        ));
        // Version 0 (an empty file) gets every migration.
        let empty = dir.path().join("e.db");
        Connection::open(&empty).unwrap();
        let db = Db::open(&empty).unwrap();
        let v: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn another_programs_database_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        for (name, setup) in [
            // Tables of its own at user_version 0 (most programs never set it).
            (
                "notes.db",
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('mine');",
            ),
            // Another program's application id.
            (
                "app.db",
                "PRAGMA application_id = 1234; CREATE TABLE t (x);",
            ),
            // Tables named like ours but no schema version.
            (
                "lookalike.db",
                "CREATE TABLE sessions (id TEXT); CREATE TABLE frames (id); CREATE TABLE steps (id);",
            ),
        ] {
            let path = dir.path().join(name);
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(setup).unwrap();
            drop(conn);
            let before = std::fs::read(&path).unwrap();
            let err = Db::open(&path).err().expect("refused").to_string();
            assert!(err.contains("not a selfagent recording"), "{name}: {err}");
            let err = Db::open_read(&path).err().expect("refused").to_string();
            assert!(err.contains("not a selfagent recording"), "{name}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), before, "{name} was changed");
            let mode: String = Connection::open(&path)
                .unwrap()
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "delete", "{name}: the journal mode was switched");
        }
    }

    #[test]
    fn processes_opening_a_new_recording_at_once_do_not_race_the_migration() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.db");
            let barrier = Arc::new(std::sync::Barrier::new(6));
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Db::open(&path).map(|db| db.sessions(1).map(|s| s.len()))
                    })
                })
                .collect();
            for h in handles {
                let opened = h.join().unwrap();
                assert!(
                    matches!(opened, Ok(Ok(0))),
                    "round {round}: {:?}",
                    opened.err()
                );
            }
        }
    }

    #[tokio::test]
    async fn reading_changes_nothing_and_works_on_read_only_media() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let (a, b) = (frame(1), frame(2));
        let mut events = vec![Event::SessionStarted(info("s3"))];
        events.extend(step_events(1, &a, &b));
        record(&path, events).await;
        let before = std::fs::read(&path).unwrap();
        // Cleanly closed: no -wal or -shm beside it, as on read-only media, where the
        // immutable form reads it without making one.
        assert!(!dir.path().join("r.db-shm").exists());
        let conn = Connection::open_with_flags(
            immutable_uri(&path),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM steps", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(conn);
        assert!(!dir.path().join("r.db-shm").exists());
        let db = Db::open_read(&path).unwrap();
        assert!(db.is_read_only());
        assert_eq!(db.steps("s3").unwrap().len(), 1);
        drop(db);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // Missing files are not created.
        let missing = dir.path().join("typo.db");
        let err = Db::open_read(&missing).err().expect("an error").to_string();
        assert!(err.contains("typo.db"), "{err}");
        assert!(!missing.exists());
    }

    #[tokio::test]
    async fn a_long_text_repeated_in_every_request_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let long = "x".repeat(200_000);
        let (a, b) = (frame(1), frame(2));
        let mut events = vec![Event::SessionStarted(info("s4"))];
        for step in 1..=10u32 {
            let mut evs = step_events(step, &a, &b);
            if let Event::ModelReply {
                exchange,
                thought,
                text,
                ..
            } = &mut evs[2]
            {
                // The same long reasoning every step, as the step's thought and text too.
                *thought = Some(long.clone());
                *text = Some(long.clone());
                // The conversation so far repeats the long reply in every request.
                let history: Vec<Value> = (0..step)
                    .map(|_| json!({"role": "assistant", "content": long}))
                    .collect();
                *exchange = Some(Arc::new(Exchange {
                    request: json!({"messages": history}),
                    response: json!({"choices": [{"message": {"content": long}}]}),
                }));
            }
            events.extend(evs);
        }
        record(&path, events).await;
        let db = Db::open_read(&path).unwrap();
        let (request, response) = db.exchange("s4", 10).unwrap();
        assert_eq!(request["messages"].as_array().unwrap().len(), 10);
        assert_eq!(request["messages"][9]["content"], json!(long));
        assert_eq!(response["choices"][0]["message"]["content"], json!(long));
        let steps = db.steps("s4").unwrap();
        assert_eq!(steps.len(), 10);
        assert_eq!(steps[9].thought.as_deref(), Some(long.as_str()));
        assert_eq!(steps[9].text.as_deref(), Some(long.as_str()));
        drop(db);
        let size = std::fs::metadata(&path).unwrap().len();
        // Once would be 200 KB; once per repetition would be 55 x 200 KB = 11 MB.
        assert!(size < 1_000_000, "{size} bytes");
    }

    #[test]
    fn session_ids_sort_by_time_and_prefixes_resolve() {
        let id = new_session_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id.starts_with(&crate::time::date(crate::time::now_ms()).replace('-', "")));
    }
}
