//! The configuration file: defaults for `run` (and later `batch`), below environment
//! variables and command-line flags. TOML, at `$SELFAGENT_CONFIG`, else
//! `$XDG_CONFIG_HOME/selfagent/config.toml`, else `~/.config/selfagent/config.toml`.
//!
//! ```toml
//! base_url = "http://127.0.0.1:8000/v1"
//! model = "ui-tars-1.5-7b"
//! api_key_env = "OPENROUTER_API_KEY"   # read the key from this variable
//! max_steps = 40
//! scale = "xga"
//! [extra]                              # merged into every request
//! temperature = 0.0
//! [[engines]]                          # where batches run desktops (default: the local one)
//! url = "unix:///var/run/docker.sock"
//! [[engines]]
//! url = "tcp://10.0.0.7:2375"
//! max_desktops = 8
//! weight = 2.0
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub base_url: Option<String>,
    pub model: Option<String>,
    /// Discouraged (prefer `api_key_env` or OPENAI_API_KEY); the file should be private.
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    pub max_steps: Option<u32>,
    /// Seconds for a whole episode.
    pub timeout: Option<f64>,
    pub scale: Option<String>,
    /// The model's protocol (see `--protocol`).
    pub protocol: Option<String>,
    /// The model's coordinate space (see `--coords`).
    pub coords: Option<String>,
    /// The largest model reply accepted, in bytes.
    pub max_reply_bytes: Option<i64>,
    /// Actions done per model reply.
    pub max_actions: Option<usize>,
    /// anthropic: the computer tool version.
    pub tool_version: Option<String>,
    /// anthropic: extended thinking (a budget, or "adaptive").
    pub thinking: Option<String>,
    /// openai: store nothing at OpenAI.
    pub no_store: Option<bool>,
    /// qwen: declare the function through `tools`.
    pub native_tools: Option<bool>,
    pub keep_images: Option<usize>,
    pub image_in_tool: Option<bool>,
    /// Options of the protocols (`--option KEY=VALUE`), e.g. `prune-every = 25`.
    pub options: Option<toml::Table>,
    /// A grounding model for a planner (see `--grounder`).
    pub grounder: Option<String>,
    pub grounder_base_url: Option<String>,
    pub grounder_protocol: Option<String>,
    pub grounder_api_key_env: Option<String>,
    /// Seconds for one model call.
    pub model_timeout: Option<f64>,
    pub max_retries: Option<u32>,
    pub db: Option<PathBuf>,
    pub prompts: Option<PathBuf>,
    pub extra: Option<toml::Table>,
    /// Docker engines a batch spreads its episodes over (see `batch --engine`).
    pub engines: Option<Vec<crate::sandbox::EngineSpec>>,
    /// Dollars per million tokens by model id (or id prefix), over the built-in list prices.
    pub prices: Option<std::collections::BTreeMap<String, crate::model::price::Price>>,
    /// Stop an episode once this many dollars are spent (see `--max-cost`).
    pub max_cost: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {error}")]
    Parse { path: String, error: String },
}

/// Where the configuration file is looked for.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SELFAGENT_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("selfagent/config.toml"))
}

/// Loads `path` (an error if given and unreadable), or the default file if it exists.
pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p.to_owned(), true),
        None => match default_path() {
            Some(p) => (p, false),
            None => return Ok(FileConfig::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FileConfig::default());
        }
        Err(error) => {
            return Err(ConfigError::Read {
                path: path.display().to_string(),
                error,
            });
        }
    };
    parse(&text).map_err(|error| ConfigError::Parse {
        path: path.display().to_string(),
        error,
    })
}

/// Parses configuration text; errors name the line and column.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    parse_as(text)
}

/// Parses TOML into `T`; errors name the line and column.
pub fn parse_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {col}: ")
            })
            .unwrap_or_default();
        format!("{at}{}", e.message())
    })
}

/// A TOML table as a JSON object (for `extra`).
pub fn toml_to_json(t: &toml::Table) -> serde_json::Map<String, serde_json::Value> {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses() {
        let c = parse("base_url = \"http://x/v1\"\nmax_steps = 7\n[extra]\ntemperature = 0.5\n")
            .unwrap();
        assert_eq!(c.base_url.as_deref(), Some("http://x/v1"));
        assert_eq!(c.max_steps, Some(7));
        assert_eq!(toml_to_json(&c.extra.unwrap())["temperature"], 0.5);
    }

    #[test]
    fn mistakes_are_located() {
        let e = parse("model = \"m\"\nmax_stpes = 3\n").unwrap_err();
        assert!(
            e.starts_with("line 2, column 1") && e.contains("max_stpes"),
            "{e}"
        );
        let e = parse("max_steps = \"many\"\n").unwrap_err();
        assert!(e.starts_with("line 1, column 13"), "{e}");
    }
}
