//! Settings: the configuration file, the environment and the flags, resolved into what an
//! episode needs (file < environment < flags; a task's limits sit between the file and the
//! flags). `run`, `batch`, the TUI and `grade` share these; the core modules never read the
//! command line themselves.

use crate::agent::{AgentConfig, DEFAULT_MAX_ACTIONS};
use crate::config::{self, FileConfig};
use crate::model::protocol::{self, CoordSpace, Options, ProtocolConfig, ProtocolName, Target};
use crate::model::{EndpointConfig, HttpModel, Secret, redact_url};
use crate::record;
use crate::sandbox::{Network, SandboxSpec};
use crate::task::Limits;
use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// `--observe`: what the model can be shown.
fn parse_observe(s: &str) -> Result<String, String> {
    s.parse::<protocol::Observe>().map(|_| s.to_owned())
}

/// The screen without flags or a task's `screen`.
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 800;

/// Settings shared by `run` and `batch`: the model, the loop, the desktop, the recording.
/// Serialized into a batch's `batch.json` so `batch --resume` runs with the same ones (no
/// field holds a secret: keys are read from the environment by name).
#[derive(Debug, Clone, Default, Args, serde::Serialize, serde::Deserialize)]
pub struct CommonArgs {
    /// OpenAI-compatible endpoint, up to /v1.
    #[arg(long, env = "OPENAI_BASE_URL")]
    pub base_url: Option<String>,
    /// The model id sent to the endpoint (without it: the only model the server lists).
    #[arg(long, env = "SELFAGENT_MODEL")]
    pub model: Option<String>,
    /// Read the API key from this environment variable instead of OPENAI_API_KEY.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Steps per episode (beats a task's limit).
    #[arg(long)]
    pub max_steps: Option<u32>,
    /// Seconds per episode (beats a task's limit).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Dollars per episode: the episode stops (status stopped, by budget) before the model
    /// call after this much was spent. Needs the model's price (built in for the public
    /// APIs, or [prices] in the config file).
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Seconds for one model call.
    #[arg(long)]
    pub model_timeout: Option<f64>,
    /// Retries of a model call on 429, 5xx, timeouts and unusable replies.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// The model's protocol: tools, or the model's own (chosen from the model id when not
    /// given; see the README's table).
    #[arg(long, value_name = "NAME")]
    pub protocol: Option<String>,
    /// The model's coordinate space: native (pixels of the screenshot sent), smart (pixels
    /// of the smart-resized screenshot), 1000, 999 (relative) or unit (0 to 1). Chosen with
    /// the protocol when not given.
    #[arg(long, value_name = "SPACE")]
    pub coords: Option<String>,
    /// Screenshot size sent to the model: native, xga (1024x768), wxga (1280x800), or a
    /// longest side in pixels; coordinates are mapped back.
    #[arg(long)]
    pub scale: Option<String>,
    /// The largest model reply accepted, in bytes (larger ones are cut off and retried).
    #[arg(long, value_parser = crate::text::parse_size)]
    pub max_reply_bytes: Option<i64>,
    /// Actions done per model reply (more are refused and the model told so).
    #[arg(long)]
    pub max_actions: Option<usize>,
    /// anthropic: the computer tool: toolset (computer_toolset_20260801), 20251124 (with
    /// zoom), 20250124 or 20241022; chosen by the model id when not given.
    #[arg(long, value_name = "VERSION")]
    pub tool_version: Option<String>,
    /// anthropic: extended thinking, a token budget (e.g. 4096) or `adaptive`.
    #[arg(long, value_name = "BUDGET")]
    pub thinking: Option<String>,
    /// openai: store nothing at OpenAI (no previous_response_id; every turn is sent whole).
    #[arg(long)]
    pub no_store: bool,
    /// qwen: declare computer_use through the request's `tools` (servers that parse tool
    /// calls, e.g. vLLM --tool-call-parser hermes) rather than the system prompt.
    #[arg(long)]
    pub native_tools: bool,
    /// openai: acknowledge the model provider's safety checks without asking (headless
    /// runs otherwise stop at the first one; the TUI asks).
    #[arg(long)]
    pub ack_safety_checks: bool,
    /// Screenshots kept as images in each request (older ones become a note).
    #[arg(long)]
    pub keep_images: Option<usize>,
    /// Put screenshots in tool messages (servers that accept it) instead of user messages.
    #[arg(long)]
    pub image_in_tool: bool,
    /// Offer launch, open and exec to the model.
    #[arg(long)]
    pub allow_setup_actions: bool,
    /// An option of the protocol, KEY=VALUE (repeatable); `selfagent protocols` lists each
    /// protocol's options (e.g. anthropic's prune-every=25, gemini's environment=browser,
    /// qwen's function=computer).
    #[arg(long = "option", short = 'o', value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// A grounding model: the model named by --model plans, naming elements in words,
    /// and this one finds them on the screen (OS-Atlas, UGround, UI-TARS, GTA1, Holo).
    #[arg(long, value_name = "MODEL")]
    pub grounder: Option<String>,
    /// The grounder's OpenAI-compatible endpoint (default: the planner's).
    #[arg(long, value_name = "URL")]
    pub grounder_base_url: Option<String>,
    /// The grounder's answer format: osatlas, point or holo (chosen from its model id when
    /// not given).
    #[arg(long, value_name = "NAME")]
    pub grounder_protocol: Option<String>,
    /// Read the grounder's key from this environment variable (default: the planner's).
    #[arg(long, value_name = "VAR")]
    pub grounder_api_key_env: Option<String>,
    /// The grounder's coordinate space (chosen with its format when not given).
    #[arg(long, value_name = "SPACE")]
    pub grounder_coords: Option<String>,
    /// JSON object merged into every request, e.g. '{"temperature":0,"max_tokens":512}'.
    #[arg(long, value_name = "JSON")]
    pub extra: Option<String>,
    /// A directory of prompts overriding the embedded ones (see prompts/README.md).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// The recording (SQLite).
    #[arg(long, env = "SELFAGENT_DB")]
    pub db: Option<PathBuf>,
    /// Do not commit the final state of graded episodes to an image (re-grading then uses
    /// only what the checks read at the end).
    #[arg(long)]
    pub no_snapshot: bool,
    /// Skip the final-state snapshot (and record why) when the desktop changed more than
    /// this (apparent sizes: a sparse file counts in full).
    #[arg(long, default_value = "1g", value_parser = crate::text::parse_size)]
    pub snapshot_max_size: i64,
    /// The configuration file (default: ~/.config/selfagent/config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Screen width in pixels (default: the task's `screen`, else 1280).
    #[arg(long)]
    pub width: Option<u32>,
    /// Screen height in pixels (default: the task's `screen`, else 800).
    #[arg(long)]
    pub height: Option<u32>,
    /// The desktop image (see `selfagent sandbox build`).
    #[arg(long, default_value = crate::sandbox::DEFAULT_IMAGE)]
    pub image: String,
    /// Start desktops from a saved snapshot (`sandbox snapshot NAME TAG`) instead of the image.
    #[arg(long, value_name = "TAG")]
    pub from: Option<String>,
    /// Run the desktop with no network at all.
    #[arg(long)]
    pub no_network: bool,
    /// Boot a desktop of our own even when a warm pool (`selfagent pool up`) has a matching
    /// one ready.
    #[arg(long)]
    pub no_pool: bool,
    /// What the model observes: `screenshot`; `screenshot+a11y` (the screen's
    /// accessibility tree beside each screenshot, in OSWorld's linearized form with
    /// positions in the model's coordinates; the last --keep-images trees in full, older
    /// ones omitted; office desktops); or `a11y`, the tree alone, no pixels (OSWorld's
    /// text-only setting; protocols pyautogui, tools and anthropic). Screenshots are
    /// recorded either way.
    #[arg(long, value_name = "WHAT", value_parser = parse_observe)]
    pub observe: Option<String>,
    /// Run tasks that say `sudo = true` on the desktop that grants the agent sudo (password
    /// `password`, as OSWorld's VM): the agent can become root in its container, read the
    /// desktop's own credentials and change anything in it (the container still bounds it).
    #[arg(long)]
    pub allow_sudo: bool,
}

impl CommonArgs {
    /// The settings with nothing given (environment variables still apply).
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            common: CommonArgs,
        }
        <Only as clap::Parser>::parse_from(["selfagent"]).common
    }

    /// Where desktops come from: a matching warm pool first, unless --no-pool.
    pub fn source(&self) -> crate::episode::Source {
        crate::episode::Source::Fresh {
            pool: !self.no_pool,
        }
    }

    /// The snapshot limit of graded episodes, `None` with --no-snapshot.
    pub fn snapshot(&self) -> Option<u64> {
        (!self.no_snapshot).then_some(self.snapshot_max_size as u64)
    }

    /// The desktop these settings ask for.
    pub fn spec(&self) -> SandboxSpec {
        self.spec_for(None)
    }

    /// Refuses tasks that need sudo unless `--allow-sudo` was given.
    pub fn check_sudo<'a>(
        &self,
        tasks: impl IntoIterator<Item = &'a crate::task::Task>,
    ) -> anyhow::Result<()> {
        let needing: Vec<&str> = tasks
            .into_iter()
            .filter(|t| t.sudo)
            .map(|t| t.id.as_str())
            .collect();
        if !needing.is_empty() && !self.allow_sudo {
            bail!(
                "{} need{} sudo (`sudo = true`): they run on a desktop where the agent can \
                 become root in its container, which needs --allow-sudo",
                needing.join(", "),
                if needing.len() == 1 { "s" } else { "" }
            );
        }
        Ok(())
    }

    /// The desktop these settings ask for to run `task`: its screen size where the flags
    /// give none, and sudo when it needs it (see [`CommonArgs::check_sudo`]).
    pub fn spec_for(&self, task: Option<&crate::task::Task>) -> SandboxSpec {
        let screen = task.and_then(|t| t.screen);
        SandboxSpec {
            sudo: self.allow_sudo && task.is_some_and(|t| t.sudo),
            image: match &self.from {
                Some(tag) => crate::sandbox::snapshot::saved_image(tag),
                None => self.image.clone(),
            },
            width: self
                .width
                .or(screen.map(|s| s.width))
                .unwrap_or(DEFAULT_WIDTH),
            height: self
                .height
                .or(screen.map(|s| s.height))
                .unwrap_or(DEFAULT_HEIGHT),
            network: if self.no_network {
                Network::None
            } else {
                Network::Bridge
            },
            ..SandboxSpec::default()
        }
    }
}

/// Everything an episode needs, with file < env < flags applied (defined where episodes
/// use it: settings sit above them).
pub use crate::episode::Resolved;

fn seconds(v: Option<f64>, default: f64, what: &str) -> anyhow::Result<Duration> {
    let s = v.unwrap_or(default);
    if !(s.is_finite() && s > 0.0) {
        bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// The model endpoint from flags, then the file (also the judge's, for `grade`).
pub fn model_config(args: &CommonArgs, file: &FileConfig) -> anyhow::Result<EndpointConfig> {
    let model = args
        .model
        .clone()
        .or_else(|| file.model.clone())
        .unwrap_or_else(|| "default".into());
    let protocol = protocol_name(args, file, &model)?;
    let base_url = args
        .base_url
        .clone()
        .or_else(|| file.base_url.clone())
        .or_else(|| protocol.default_base_url().map(str::to_owned))
        .context("no model endpoint: pass --base-url, set OPENAI_BASE_URL, or put base_url in the config file")?;
    // As the protocol's paths expect it (Anthropic's /v1/messages: without a trailing /v1).
    let base_url = protocol.spec().base_url(&base_url);
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!(
            "--base-url must start with http:// or https://, got '{}'",
            redact_url(&base_url)
        );
    }
    let key_var = args
        .api_key_env
        .clone()
        .or_else(|| file.api_key_env.clone());
    let api_key = match &key_var {
        Some(var) => {
            std::env::var(var).with_context(|| format!("the API key variable {var} is not set"))?
        }
        None => protocol
            .spec()
            .endpoint()
            .key_variables
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .or_else(|| file.api_key.clone())
            .unwrap_or_default(),
    };
    let mut extra = file
        .extra
        .as_ref()
        .map(config::toml_to_json)
        .unwrap_or_default();
    if let Some(text) = &args.extra {
        let v: serde_json::Value =
            serde_json::from_str(text).context("--extra is not valid JSON")?;
        let Some(obj) = v.as_object() else {
            bail!("--extra must be a JSON object");
        };
        extra.extend(obj.clone());
    }
    let max_reply_bytes = match args.max_reply_bytes.or(file.max_reply_bytes) {
        Some(n) if n >= 1024 => n as usize,
        Some(_) => bail!("--max-reply-bytes must be at least 1k"),
        None => crate::model::DEFAULT_MAX_REPLY_BYTES,
    };
    Ok(EndpointConfig {
        base_url,
        model,
        api_key: Secret::new(api_key),
        timeout: seconds(
            args.model_timeout.or(file.model_timeout),
            120.0,
            "--model-timeout",
        )?,
        max_retries: args.max_retries.or(file.max_retries).unwrap_or(5),
        max_reply_bytes,
        extra,
    })
}

/// The protocol's options: the file's `[options]`, then its named keys, then the flags
/// (`--tool-version`, `--thinking`, `--no-store`, `--native-tools`, `--image-in-tool`, and
/// every `--option KEY=VALUE`), checked against what the protocols read.
pub fn protocol_options(
    args: &CommonArgs,
    file: &FileConfig,
    protocol: ProtocolName,
) -> anyhow::Result<Options> {
    let mut o = Options::default();
    for (k, v) in file.options.iter().flatten() {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        o.set(k, text);
    }
    let named = [
        (
            "tool-version",
            args.tool_version
                .clone()
                .or_else(|| file.tool_version.clone()),
        ),
        (
            "thinking",
            args.thinking.clone().or_else(|| file.thinking.clone()),
        ),
        (
            "no-store",
            (args.no_store || file.no_store.unwrap_or(false)).then(|| "true".into()),
        ),
        (
            "native-tools",
            (args.native_tools || file.native_tools.unwrap_or(false)).then(|| "true".into()),
        ),
        (
            "image-in-tool",
            (args.image_in_tool || file.image_in_tool.unwrap_or(false)).then(|| "true".into()),
        ),
    ];
    for (k, v) in named {
        if let Some(v) = v {
            o.set(k, v);
        }
    }
    for pair in &args.options {
        let (k, v) = Options::parse_pair(pair).map_err(anyhow::Error::msg)?;
        o.set(&k, v);
    }
    if grounder_model(args, file).is_some() {
        o.set("planner", "true");
    }
    o.check(protocol).map_err(anyhow::Error::msg)?;
    Ok(o)
}

fn grounder_model(args: &CommonArgs, file: &FileConfig) -> Option<String> {
    args.grounder.clone().or_else(|| file.grounder.clone())
}

/// The grounder, when one is named: its endpoint (the planner's unless given), answer
/// format and coordinate space.
pub fn grounder(
    args: &CommonArgs,
    file: &FileConfig,
    planner: &EndpointConfig,
) -> anyhow::Result<Option<crate::agent::Grounder>> {
    let Some(model) = grounder_model(args, file) else {
        return Ok(None);
    };
    let (detected, detected_space) = protocol::grounding::detect(&model);
    let dialect = match args
        .grounder_protocol
        .clone()
        .or_else(|| file.grounder_protocol.clone())
    {
        Some(name) => protocol::grounding::by_name(&name).map_err(anyhow::Error::msg)?,
        None => detected,
    };
    let space: CoordSpace = match &args.grounder_coords {
        Some(c) => c.parse().map_err(anyhow::Error::msg)?,
        None if dialect.name() == detected.name() => detected_space,
        None => dialect.default_space(),
    };
    let base_url = args
        .grounder_base_url
        .clone()
        .or_else(|| file.grounder_base_url.clone())
        .unwrap_or_else(|| planner.base_url.clone());
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        bail!(
            "--grounder-base-url must start with http:// or https://, got '{}'",
            redact_url(&base_url)
        );
    }
    let api_key = match args
        .grounder_api_key_env
        .clone()
        .or_else(|| file.grounder_api_key_env.clone())
    {
        Some(var) => Secret::new(
            std::env::var(&var)
                .with_context(|| format!("the grounder's key variable {var} is not set"))?,
        ),
        None => planner.api_key.clone(),
    };
    let endpoint = EndpointConfig {
        base_url,
        model: model.clone(),
        api_key,
        extra: Default::default(),
        ..planner.clone()
    };
    let prices: Vec<_> = file
        .prices
        .iter()
        .flatten()
        .map(|(k, p)| (k.clone(), *p))
        .collect();
    Ok(Some(crate::agent::Grounder {
        model: std::sync::Arc::new(HttpModel::new(endpoint)?),
        dialect,
        space,
        price: crate::model::price::lookup(&model, &prices),
    }))
}

/// Settings from flags, then a task's limits, then the file, then defaults.
pub fn resolve(
    args: &CommonArgs,
    file: &FileConfig,
    instruction: String,
    limits: &Limits,
) -> anyhow::Result<Resolved> {
    let model = model_config(args, file)?;
    let target: Target = match args.scale.clone().or_else(|| file.scale.clone()) {
        Some(s) => s.parse().map_err(anyhow::Error::msg)?,
        None => Target::Native,
    };
    let name = protocol_name(args, file, &model.model)?;
    let id = protocol::ModelId::new(&model.model);
    let space: CoordSpace = match args.coords.clone().or_else(|| file.coords.clone()) {
        Some(c) => c.parse().map_err(anyhow::Error::msg)?,
        None => name
            .spec()
            .detect(&id)
            .unwrap_or_else(|| name.spec().default_space(&id)),
    };
    let max_actions = args
        .max_actions
        .or(file.max_actions)
        .unwrap_or(DEFAULT_MAX_ACTIONS);
    if max_actions == 0 {
        bail!("--max-actions must be at least 1");
    }
    let max_steps = args
        .max_steps
        .or(limits.max_steps)
        .or(file.max_steps)
        .unwrap_or(50);
    if max_steps == 0 {
        bail!("--max-steps must be at least 1");
    }
    let model_id = model.model.clone();
    let protocol = ProtocolConfig {
        name,
        space,
        target,
        keep_images: args.keep_images.or(file.keep_images).unwrap_or(3),
        allow_setup_actions: args.allow_setup_actions,
        prompts: args.prompts.clone().or_else(|| file.prompts.clone()),
        model: model_id.clone(),
        options: protocol_options(args, file, name)?,
        observe: args
            .observe
            .as_deref()
            .unwrap_or("screenshot")
            .parse()
            .map_err(anyhow::Error::msg)?,
    };
    if !protocol.observe.pixels() && grounder_model(args, file).is_some() {
        bail!(
            "--observe a11y shows the model no screenshot, and a --grounder finds elements in one"
        );
    }
    if name != ProtocolName::planner() && grounder_model(args, file).is_some() {
        bail!(
            "--grounder plans with the {} protocol, not {name}: pass --protocol {} for the planner {model_id}",
            ProtocolName::planner(),
            ProtocolName::planner()
        );
    }
    // The options' values are the protocol's to read: a conversation started now says
    // what is wrong before any desktop starts.
    protocol::create(&protocol, (1280, 800)).map_err(anyhow::Error::msg)?;
    let grounder = grounder(args, file, &model)?;
    let prices: Vec<_> = file
        .prices
        .iter()
        .flatten()
        .map(|(k, p)| (k.clone(), *p))
        .collect();
    let price = crate::model::price::lookup(&model_id, &prices);
    let max_cost = args.max_cost.or(file.max_cost);
    if let Some(max) = max_cost {
        if !(max.is_finite() && max > 0.0) {
            bail!("--max-cost must be a positive number of dollars");
        }
        if price.is_none() {
            bail!(
                "--max-cost needs the price of {model_id}: add to the config file\n  [prices.\"{model_id}\"]\n  input = 3.0    # dollars per million input tokens\n  output = 15.0  # and output tokens"
            );
        }
    }
    Ok(Resolved {
        model,
        agent: AgentConfig {
            instruction,
            max_steps,
            timeout: seconds(
                args.timeout.or(limits.timeout).or(file.timeout),
                1800.0,
                "--timeout",
            )?,
            protocol,
            max_actions,
            ack_safety_checks: args.ack_safety_checks,
            price,
            max_cost,
            grounder,
            ..AgentConfig::default()
        },
        db: db_path(args.db.as_ref(), file),
    })
}

/// The protocol settings name, or the one the model id implies.
pub fn protocol_name(
    args: &CommonArgs,
    file: &FileConfig,
    model: &str,
) -> anyhow::Result<ProtocolName> {
    match args.protocol.clone().or_else(|| file.protocol.clone()) {
        Some(p) => p.parse().map_err(anyhow::Error::msg),
        // A planner speaks `tools`, whatever its model.
        None if grounder_model(args, file).is_some() => Ok(ProtocolName::planner()),
        None => Ok(protocol::detect(model).0),
    }
}

/// A judge: the endpoint and the protocol it speaks.
pub fn judge_model(
    args: &CommonArgs,
    file: &FileConfig,
) -> anyhow::Result<(std::sync::Arc<HttpModel>, ProtocolName)> {
    let cfg = model_config(args, file)?;
    let name = protocol_name(args, file, &cfg.model)?;
    Ok((std::sync::Arc::new(HttpModel::new(cfg)?), name))
}

/// The recording: the flag (or SELFAGENT_DB), the file, the default.
pub fn db_path(flag: Option<&PathBuf>, file: &FileConfig) -> PathBuf {
    flag.cloned()
        .or_else(|| file.db.clone())
        .unwrap_or_else(|| PathBuf::from(record::DEFAULT_DB))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        common: CommonArgs,
        task: Option<String>,
    }

    fn args(list: &[&str]) -> Wrap {
        Wrap::parse_from(std::iter::once("run").chain(list.iter().copied()))
    }

    #[test]
    fn a_tasks_screen_is_the_desktops_unless_the_flags_say_otherwise() {
        let task = crate::task::Task::parse(
            "id = \"t\"\ninstruction = \"x\"\nscreen = { width = 1920, height = 1080 }\n",
            "t.toml",
        )
        .unwrap();
        let size = |s: SandboxSpec| (s.width, s.height);
        assert_eq!(size(args(&[]).common.spec_for(Some(&task))), (1920, 1080));
        assert_eq!(size(args(&[]).common.spec_for(None)), (1280, 800));
        assert_eq!(
            size(
                args(&["--width", "1024", "--height", "768"])
                    .common
                    .spec_for(Some(&task))
            ),
            (1024, 768)
        );
        let err = crate::task::Task::parse(
            "id = \"t\"\ninstruction = \"x\"\nscreen = { width = 10, height = 1080 }\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`screen` 10x1080 is out of range"), "{err}");
    }

    #[test]
    fn flags_beat_the_file_and_defaults_fill_in() {
        let file = config::parse("base_url = \"http://file/v1\"\nmodel = \"file-model\"\nmax_steps = 9\n[extra]\ntemperature = 1.0\n").unwrap();
        let a = args(&[
            "--base-url",
            "http://flag/v1",
            "--extra",
            "{\"top_p\":0.5}",
            "--scale",
            "xga",
            "task",
        ]);
        let r = resolve(&a.common, &file, "task".into(), &Limits::default()).unwrap();
        assert_eq!(r.model.base_url, "http://flag/v1");
        assert_eq!(r.model.model, "file-model");
        assert_eq!(r.agent.max_steps, 9);
        assert_eq!(r.agent.protocol.target, Target::Xga);
        assert_eq!(
            (
                r.model.extra["temperature"].as_f64(),
                r.model.extra["top_p"].as_f64()
            ),
            (Some(1.0), Some(0.5))
        );
        assert_eq!(r.db, PathBuf::from(record::DEFAULT_DB));
    }

    #[test]
    fn a_tasks_limits_beat_the_file_but_not_the_flags() {
        let file =
            config::parse("base_url = \"http://file/v1\"\nmax_steps = 9\ntimeout = 99\n").unwrap();
        let limits = Limits {
            max_steps: Some(4),
            timeout: Some(30.0),
        };
        let r = resolve(&args(&[]).common, &file, "t".into(), &limits).unwrap();
        assert_eq!((r.agent.max_steps, r.agent.timeout.as_secs()), (4, 30));
        let r = resolve(
            &args(&["--max-steps", "7"]).common,
            &file,
            "t".into(),
            &limits,
        )
        .unwrap();
        assert_eq!((r.agent.max_steps, r.agent.timeout.as_secs()), (7, 30));
    }

    #[test]
    fn bad_settings_are_explained() {
        let none = FileConfig::default();
        for (list, needle) in [
            (vec!["--base-url", "ftp://x"], "must start with http"),
            (
                vec!["--base-url", "http://x", "--extra", "[1]"],
                "JSON object",
            ),
            (
                vec!["--base-url", "http://x", "--scale", "huge"],
                "not a target size",
            ),
            (
                vec!["--base-url", "http://x", "--max-steps", "0"],
                "at least 1",
            ),
            (vec!["--base-url", "http://x", "--timeout=-1"], "positive"),
        ] {
            let e = resolve(&args(&list).common, &none, "t".into(), &Limits::default())
                .err()
                .expect("an error")
                .to_string();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }

    #[test]
    fn protocol_options_come_from_flags_and_the_file_and_are_checked() {
        let file = config::parse(
            "base_url = \"http://x/v1\"\nthinking = \"adaptive\"\n[options]\nprune-every = 10\n",
        )
        .unwrap();
        let r = resolve(
            &args(&["--model", "claude-opus-5-5", "-o", "zoom=no"]).common,
            &file,
            "t".into(),
            &Limits::default(),
        )
        .unwrap();
        let o = &r.agent.protocol.options;
        assert_eq!(
            (o.get("prune-every"), o.get("thinking"), o.get("zoom")),
            (Some("10"), Some("adaptive"), Some("no"))
        );
        // A typo is no option of any protocol; a bad value is the protocol's to refuse.
        let none = FileConfig::default();
        for (list, needle) in [
            (
                vec!["--model", "m", "-o", "prune-evry=3"],
                "not an option of any protocol",
            ),
            (
                vec!["--model", "claude-opus-5-5", "-o", "prune-every=many"],
                "prune-every",
            ),
            (
                vec!["--model", "gemini-3.5-flash", "-o", "environment=phone"],
                "desktop or browser",
            ),
            (
                vec![
                    "--model",
                    "m",
                    "--protocol",
                    "uitars",
                    "--grounder",
                    "os-atlas-7b",
                ],
                "--grounder plans with the tools protocol",
            ),
        ] {
            let mut list = list;
            list.extend(["--base-url", "http://x/v1"]);
            let e = resolve(&args(&list).common, &none, "t".into(), &Limits::default())
                .err()
                .expect("an error")
                .to_string();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }

    #[test]
    fn a_grounder_makes_any_model_a_tools_planner() {
        let none = FileConfig::default();
        let r = resolve(
            &args(&[
                "--base-url",
                "http://x/v1",
                "--model",
                "claude-sonnet-5-5",
                "--grounder",
                "OS-Copilot/OS-Atlas-Base-7B",
            ])
            .common,
            &none,
            "t".into(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(r.agent.protocol.name.as_str(), "tools");
        assert_eq!(r.agent.protocol.options.get("planner"), Some("true"));
        let g = r.agent.grounder.expect("a grounder");
        assert_eq!(
            (g.dialect.name(), g.space),
            ("osatlas", CoordSpace::Thousand)
        );
        assert_eq!(
            g.model.config().base_url,
            "http://x/v1",
            "the planner's endpoint"
        );
    }
}
