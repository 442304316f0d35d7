//! Recordings anyone can hand you never crash a reader. Every text and number column of a
//! real recording (the shipped demo) is mutated in turn: long non-ASCII text, empty text,
//! a megabyte, NUL bytes, negative numbers, values of the wrong type, NULL, and each
//! reader runs on it: `sessions ls`, `sessions show`, `sessions frame`, `export --html`,
//! `--gif`, `--jsonl`, `grade`, `run --db` opening it (refused by its dead endpoint, after
//! the recording is opened), and `replay` in tmux for the cases that once panicked. Each
//! must end with output or a clear error, never a panic (exit code 101, "panicked").

use crate::common::bin;
use rusqlite::Connection;
use rusqlite::types::Value as Sql;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/recordings/demo.db");

/// A value to write into a column of the declared type.
type Mutation = (&'static str, fn(&str) -> Sql);

fn mutations() -> Vec<Mutation> {
    vec![
        ("non-ascii", |_| Sql::Text(format!("a{}", "é".repeat(600)))),
        ("empty", |_| Sql::Text(String::new())),
        ("a megabyte", |_| Sql::Text("x".repeat(1 << 20))),
        ("nul bytes", |_| Sql::Text("a\0b\0".into())),
        ("negative", |_| Sql::Integer(-3)),
        ("wrong type", |decl| {
            if decl.eq_ignore_ascii_case("TEXT") {
                Sql::Integer(12345)
            } else {
                Sql::Text("not a number".into())
            }
        }),
        ("a blob", |_| Sql::Blob(vec![0, 159, 255, 0])),
        ("null", |_| Sql::Null),
    ]
}

/// Every column of every table of the demo recording, with its declared type.
fn columns() -> Vec<(String, String, String)> {
    let c = Connection::open_with_flags(DEMO, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
        let cols: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.extend(cols.into_iter().map(|(name, decl)| (t.clone(), name, decl)));
    }
    out
}

/// A copy of the demo with `column` of `table` set to `value` in every row.
fn mutated(dir: &Path, table: &str, column: &str, value: &Sql) -> PathBuf {
    let path = dir.join(format!("{table}-{column}.db"));
    let _ = std::fs::remove_file(&path);
    std::fs::copy(DEMO, &path).unwrap();
    let c = Connection::open(&path).unwrap();
    // Constraints (NOT NULL, UNIQUE) may refuse a value: then the column keeps its own.
    let _ = c.execute(&format!("UPDATE {table} SET {column} = ?1"), [value]);
    path
}

fn session_id() -> String {
    let c = Connection::open_with_flags(DEMO, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT id FROM sessions", [], |r| r.get(0))
        .unwrap()
}

/// Runs a reader; returns what went wrong if it panicked (or was killed).
fn read(args: &[&str], what: &str) -> Option<String> {
    let out = Command::new(bin())
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("SELFAGENT_CONFIG")
        .env("HOME", "/nonexistent-home")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    (code == Some(101) || code.is_none() || stderr.contains("panicked")).then(|| {
        format!(
            "{what}: `selfagent {}` exited {code:?}: {}",
            args.join(" "),
            stderr.chars().take(600).collect::<String>()
        )
    })
}

/// A copy of the demo with every column of `table` set to the mutation's value for its
/// type (the expensive readers run once per table and mutation).
fn mutated_table(dir: &Path, table: &str, columns: &[(String, String)], m: &Mutation) -> PathBuf {
    let path = dir.join(format!("{table}.db"));
    let _ = std::fs::remove_file(&path);
    std::fs::copy(DEMO, &path).unwrap();
    let c = Connection::open(&path).unwrap();
    for (column, decl) in columns.iter().filter(|(_, decl)| fits(m.0, decl)) {
        let _ = c.execute(&format!("UPDATE {table} SET {column} = ?1"), [m.1(decl)]);
    }
    path
}

/// Whether a table-wide mutation touches a column of this type: text goes into text
/// columns and numbers into number columns (so one column's refusal does not hide what
/// another would do to a reader); the wrong types go everywhere.
fn fits(mutation: &str, decl: &str) -> bool {
    let text = decl.eq_ignore_ascii_case("TEXT");
    match mutation {
        "non-ascii" | "empty" | "a megabyte" | "nul bytes" => text,
        "negative" => !text && !decl.eq_ignore_ascii_case("BLOB"),
        _ => true,
    }
}

/// Runs `cases` on four threads; each returns the panics it saw.
fn in_parallel<T: Sync>(cases: &[T], run: impl Fn(usize, &T) -> Vec<String> + Sync) -> Vec<String> {
    let failures = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let found = run(i, case);
                    failures.lock().unwrap().extend(found);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

#[test]
fn no_mutated_column_crashes_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let id = session_id();
    let all = columns();
    // The readers that take milliseconds: every column, every mutation.
    let mut cases = Vec::new();
    for (table, column, decl) in &all {
        for m in mutations() {
            cases.push((table.clone(), column.clone(), m.0, m.1(decl)));
        }
    }
    let mut failures = in_parallel(&cases, |i, (table, column, name, value)| {
        let case_dir = dir.path().join(format!("c{i}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let db = mutated(&case_dir, table, column, value);
        let db = db.to_str().unwrap();
        let out = case_dir.join("out");
        let out = out.to_str().unwrap();
        let what = format!("{table}.{column} = {name}");
        let readers: Vec<Vec<&str>> = vec![
            vec!["sessions", "ls", "--db", db],
            vec!["sessions", "show", &id, "--db", db],
            vec!["sessions", "frame", &id, "1", "--output", out, "--db", db],
            vec!["export", "--jsonl", &id, "--output", out, "--db", db],
            vec!["grade", &id, "--no-snapshot", "--db", db],
            vec![
                "run",
                "--headless",
                "--db",
                db,
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "nothing",
            ],
        ];
        let found = readers.iter().filter_map(|a| read(a, &what)).collect();
        let _ = std::fs::remove_dir_all(&case_dir);
        found
    });
    // The pictures (seconds each): every mutation of all of a table's columns at once.
    let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (table, column, decl) in all {
        match tables.iter_mut().find(|(t, _)| *t == table) {
            Some((_, cols)) => cols.push((column, decl)),
            None => tables.push((table, vec![(column, decl)])),
        }
    }
    let mut picture_cases = Vec::new();
    for (table, cols) in &tables {
        for m in mutations() {
            picture_cases.push((table.clone(), cols.clone(), m));
        }
    }
    failures.extend(in_parallel(&picture_cases, |i, (table, cols, m)| {
        let case_dir = dir.path().join(format!("p{i}"));
        std::fs::create_dir_all(&case_dir).unwrap();
        let db = mutated_table(&case_dir, table, cols, m);
        let db = db.to_str().unwrap();
        let out = case_dir.join("out");
        let out = out.to_str().unwrap();
        let what = format!("every column of {table} = {}", m.0);
        let found = [
            vec!["export", "--html", id.as_str(), "--output", out, "--db", db],
            vec!["export", "--gif", id.as_str(), "--output", out, "--db", db],
        ]
        .iter()
        .filter_map(|a| read(a, &what))
        .collect();
        let _ = std::fs::remove_dir_all(&case_dir);
        found
    }));
    assert!(
        failures.is_empty(),
        "{} reader runs panicked:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The two files once handed to readers that crashed them: a schema version no selfagent
/// writes, and a desktop name that is not ASCII (its first 12 bytes end inside a
/// character).
#[test]
fn the_recordings_that_crashed_readers_are_clear_errors_now() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("negative.db");
    std::fs::copy(DEMO, &db).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA user_version = -3")
        .unwrap();
    for args in [
        vec!["sessions", "ls", "--db", db.to_str().unwrap()],
        vec![
            "run",
            "--headless",
            "--db",
            db.to_str().unwrap(),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "nothing",
        ],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .env_remove("SELFAGENT_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert!(
            stderr.contains("schema version is -3"),
            "{args:?}: {stderr}"
        );
    }
    // The desktop's name, shown by `sessions show` and the replay's header.
    let db = dir.path().join("sandbox.db");
    std::fs::copy(DEMO, &db).unwrap();
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE sessions SET sandbox = ?1",
            [format!("a{}", "é".repeat(40))],
        )
        .unwrap();
    let out = Command::new(bin())
        .args([
            "sessions",
            "show",
            &session_id(),
            "--db",
            db.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run the pre-flight refuses (nothing answers at the endpoint) makes no recording.
#[test]
fn a_run_refused_before_it_starts_leaves_no_recording() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let out = Command::new(bin())
        .args([
            "run",
            "--headless",
            "--db",
            db.to_str().unwrap(),
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "nothing",
        ])
        .env_remove("SELFAGENT_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the model server"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!db.exists(), "an empty recording was left behind");
}

/// `replay` draws whatever a recording holds: each table's text and numbers mutated at
/// once, in a real terminal (tmux); it shows the episode or says what is wrong, and quits.
#[tokio::test(flavor = "multi_thread")]
async fn replay_shows_hostile_recordings_or_says_why() {
    use crate::common::tmux::Tmux;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let id = session_id();
    let all = columns();
    for table in ["sessions", "steps", "texts"] {
        // The keys stay: a session that cannot be found is not drawn at all.
        let cols: Vec<(String, String)> = all
            .iter()
            .filter(|(t, c, _)| t == table && c != "id" && c != "session_id")
            .map(|(_, c, d)| (c.clone(), d.clone()))
            .collect();
        for m in mutations()
            .into_iter()
            .filter(|m| ["non-ascii", "nul bytes", "wrong type", "empty"].contains(&m.0))
        {
            let db = mutated_table(dir.path(), table, &cols, &m);
            let command = format!(
                "{} replay {id} --db {}; echo EXIT=$?; sleep 60",
                bin(),
                db.display()
            );
            let tmux = Tmux::start(&format!("replay-{table}"), 120, 36, &command);
            let screen = tmux
                .wait_for(
                    &format!("the replay of {table} = {}", m.0),
                    Duration::from_secs(20),
                    |s| s.contains("timeline ·") || s.contains("EXIT="),
                )
                .await;
            if !screen.contains("EXIT=") {
                tmux.keys("q");
            }
            let end = tmux
                .wait_for("the replay to end", Duration::from_secs(10), |s| {
                    s.contains("EXIT=")
                })
                .await;
            assert!(
                !end.contains("panicked") && !end.contains("EXIT=101"),
                "{table} = {}:\n{end}",
                m.0
            );
        }
    }
}
