//! Early checks: is the model endpoint there, is the key accepted, which model and protocol
//! would run, is the engine up, is the image built. `selfagent doctor` prints all of them;
//! `run`, `batch` and `calibrate` do the endpoint part before any desktop starts, so a wrong
//! `--base-url` or key costs a second, not a desktop start and a minute of retries.

use crate::config::FileConfig;
use crate::model::protocol::{self, ProtocolName};
use crate::model::{HttpModel, Listing, ModelError, redact_url};
use crate::settings::{CommonArgs, model_config, protocol_name};
use serde::Serialize;
use std::time::Duration;

/// How long the endpoint gets to answer `GET /models`.
const PROBE_WITHIN: Duration = Duration::from_secs(5);

/// How one finding went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Worth knowing, not in the way (a model the server does not list may still be served
    /// under an alias).
    Note,
    Fail,
}

/// One thing checked: what, how it went, and the fix when it did not.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub what: &'static str,
    pub level: Level,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: &'static str, text: impl Into<String>) -> Self {
        Self {
            what,
            level: Level::Ok,
            text: text.into(),
            fix: None,
        }
    }

    fn note(what: &'static str, text: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what,
            level: Level::Note,
            text: text.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(what: &'static str, text: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            what,
            level: Level::Fail,
            text: text.into(),
            fix,
        }
    }

    /// The finding as an error message: the problem, then the fix on its own line.
    pub fn message(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}\n  fix: {fix}", self.text),
            None => self.text.clone(),
        }
    }
}

/// Where the key is read from, for the fix of a refused key.
fn key_source(args: &CommonArgs, file: &FileConfig, protocol: ProtocolName) -> String {
    match args.api_key_env.as_ref().or(file.api_key_env.as_ref()) {
        Some(var) => var.clone(),
        None if std::env::var_os(protocol.key_variable()).is_none() && file.api_key.is_some() => {
            "the config file's api_key".into()
        }
        None => protocol.key_variable().into(),
    }
}

/// The last cause of a connection error, the part people recognise ("Connection refused
/// (os error 111)", "dns error: failed to lookup address").
fn short_cause(error: &str) -> &str {
    let last = error.rsplit(": ").next().unwrap_or(error);
    if last.len() < 8 { error } else { last }
}

/// A few ids of a listing, for messages.
fn some_of(ids: &[String]) -> String {
    let mut text = ids.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 8 {
        text.push_str(&format!(", … ({} in all)", ids.len()));
    }
    text
}

/// Checks the model endpoint the settings name: reachable, key accepted, model listed,
/// the protocol it would use. When no model is given anywhere and the server lists exactly
/// one, `args.model` becomes that one (a local vLLM or llama.cpp server serves one model).
pub async fn check_endpoint(args: &mut CommonArgs, file: &FileConfig) -> Vec<Finding> {
    let mut found = Vec::new();
    let given = args.model.is_some() || file.model.is_some();
    let cfg = match model_config(args, file) {
        Ok(cfg) => cfg,
        Err(e) => {
            found.push(Finding::fail("endpoint", format!("{e:#}"), None));
            return found;
        }
    };
    let url = redact_url(&cfg.base_url);
    let name = match protocol_name(args, file, if given { &cfg.model } else { "" }) {
        Ok(n) => n,
        Err(e) => {
            found.push(Finding::fail("protocol", format!("{e:#}"), None));
            return found;
        }
    };
    let endpoint = name.spec().endpoint();
    let key = key_source(args, file, name);
    let has_key = !cfg.api_key.is_empty();
    let model = match HttpModel::new(cfg.clone()) {
        Ok(m) => m,
        Err(e) => {
            found.push(Finding::fail("endpoint", e.to_string(), None));
            return found;
        }
    };
    let listing = match model.list_models(&endpoint, PROBE_WITHIN).await {
        Ok(listing) => listing,
        Err(ModelError::Http { status, body }) => {
            let fix = if has_key {
                format!("the key comes from {key}: check that it is a key for {url}")
            } else {
                format!(
                    "no key is set: export {}=… (or name the variable with --api-key-env)",
                    name.key_variable()
                )
            };
            let body = body.trim();
            found.push(Finding::fail(
                "endpoint",
                format!("the model server at {url} refused the key (HTTP {status}): {body}"),
                Some(fix),
            ));
            return found;
        }
        Err(ModelError::Timeout(within)) => {
            found.push(Finding::fail(
                "endpoint",
                format!(
                    "the model server at {url} did not answer within {} s",
                    within.as_secs()
                ),
                Some("check --base-url (the host and port), and any proxy or firewall".into()),
            ));
            return found;
        }
        Err(ModelError::Connect { error, .. }) => {
            found.push(Finding::fail(
                "endpoint",
                format!(
                    "cannot reach the model server at {url}: {}",
                    short_cause(&error)
                ),
                Some(
                    "is the server running and listening there? Check --base-url (or \
                     OPENAI_BASE_URL, or base_url in the config file)"
                        .into(),
                ),
            ));
            return found;
        }
        Err(e) => {
            found.push(Finding::fail("endpoint", e.to_string(), None));
            return found;
        }
    };
    found.push(Finding::ok(
        "endpoint",
        match (&listing, has_key) {
            (Listing::Models(ids), true) => {
                format!(
                    "{url} answers, the key ({key}) is accepted, {} models",
                    ids.len()
                )
            }
            (Listing::Models(ids), false) => {
                format!("{url} answers without a key, {} models", ids.len())
            }
            (Listing::NoList { status }, _) => format!(
                "{url} answers (it does not list its models: HTTP {status}, so the key is \
                 checked by the first request)"
            ),
        },
    ));
    let model_id = match (&listing, given) {
        (Listing::Models(ids), true) => {
            let id = &cfg.model;
            if ids.iter().any(|m| m == id) {
                found.push(Finding::ok("model", format!("{id} (listed)")));
            } else if ids.iter().any(|m| m.starts_with(id.as_str())) {
                found.push(Finding::ok(
                    "model",
                    format!("{id} (an alias of a listed model)"),
                ));
            } else {
                found.push(Finding::note(
                    "model",
                    format!(
                        "{id} is not among the server's models ({}); the first request will tell",
                        some_of(ids)
                    ),
                    "check --model",
                ));
            }
            id.clone()
        }
        (Listing::NoList { .. }, true) => {
            found.push(Finding::ok(
                "model",
                format!("{} (not checked: no list)", cfg.model),
            ));
            cfg.model.clone()
        }
        (Listing::Models(ids), false) if ids.len() == 1 => {
            found.push(Finding::ok(
                "model",
                format!(
                    "{} (the only model the server lists; --model chooses)",
                    ids[0]
                ),
            ));
            args.model = Some(ids[0].clone());
            ids[0].clone()
        }
        (Listing::Models(ids), false) => {
            let text = if ids.is_empty() {
                "no model given, and the server lists none".to_owned()
            } else {
                format!(
                    "no model given, and the server lists {}: {}",
                    ids.len(),
                    some_of(ids)
                )
            };
            found.push(Finding::fail(
                "model",
                text,
                Some(
                    "pass --model NAME (or set SELFAGENT_MODEL, or model in the config file)"
                        .into(),
                ),
            ));
            return found;
        }
        (Listing::NoList { .. }, false) => {
            found.push(Finding::fail(
                "model",
                "no model given, and the server does not list its models",
                Some(
                    "pass --model NAME (or set SELFAGENT_MODEL, or model in the config file)"
                        .into(),
                ),
            ));
            return found;
        }
    };
    let chosen = if args.protocol.is_some() || file.protocol.is_some() {
        "as set"
    } else {
        "from the model id"
    };
    match protocol_name(args, file, &model_id) {
        Ok(name) => {
            let (detected, space) = protocol::detect(&model_id);
            let space = match args.coords.as_ref().or(file.coords.as_ref()) {
                Some(c) => c.clone(),
                None if name == detected => space.to_string(),
                None => "native".into(),
            };
            found.push(Finding::ok(
                "protocol",
                format!("{name}, coordinates {space} ({chosen})"),
            ));
        }
        Err(e) => found.push(Finding::fail("protocol", format!("{e:#}"), None)),
    }
    found
}

/// What `run`, `batch` and `calibrate` check before a desktop starts: the recording can be
/// opened (or made), and the endpoint (see [`endpoint`]).
pub async fn before_desktop(args: &mut CommonArgs, file: &FileConfig) -> anyhow::Result<()> {
    let db = crate::settings::db_path(args.db.as_ref(), file);
    // An existing recording is checked first (a foreign or broken file is the first thing
    // to hear about); a new one is made only once the endpoint answers, so a refused run
    // leaves no empty recording behind.
    if db.exists() {
        drop(crate::record::Db::open(&db)?);
        endpoint(args, file).await
    } else {
        endpoint(args, file).await?;
        drop(crate::record::Db::open(&db)?);
        Ok(())
    }
}

/// The endpoint part of the checks, before a desktop starts: the first failure is the
/// error; notes go to stderr. Fills in the model as [`check_endpoint`] does.
pub async fn endpoint(args: &mut CommonArgs, file: &FileConfig) -> anyhow::Result<()> {
    for f in check_endpoint(args, file).await {
        match f.level {
            Level::Fail => anyhow::bail!("{}", f.message()),
            Level::Note => eprintln!("note: {}", f.message()),
            Level::Ok => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_people_recognise_is_kept() {
        assert_eq!(
            short_cause(
                "error sending request for url (http://127.0.0.1:9/v1/models): client error (Connect): tcp connect error: Connection refused (os error 111)"
            ),
            "Connection refused (os error 111)"
        );
        assert_eq!(short_cause("x: io"), "x: io");
    }

    #[test]
    fn long_listings_are_cut() {
        let ids: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let text = some_of(&ids);
        assert!(text.starts_with("m0, m1"), "{text}");
        assert!(text.ends_with("(20 in all)"), "{text}");
    }
}
