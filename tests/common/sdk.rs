//! The vendors' SDK types as judges (tests/sdk/validate.py): every request the scripted
//! model server receives is checked against the SDK's request types of its API, and every
//! scripted reply is parsed by the SDK's response type and sent as the SDK serializes it.
//!
//! One judge serves the whole test run: the first test process that needs it starts it
//! (tests/sdk/start.sh, under `flock`, creating the tests' Python environment from PyPI when
//! it is missing), and it exits by itself once idle.

use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The API a request or reply belongs to, named as the judge names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAiChat,
    OpenAiResponses,
    Gemini,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAiChat => "openai-chat",
            Self::OpenAiResponses => "openai-responses",
            Self::Gemini => "gemini",
        }
    }

    /// The API a request path is for.
    pub fn of_path(path: &str) -> Option<Self> {
        if path.ends_with("/chat/completions") {
            Some(Self::OpenAiChat)
        } else if path.ends_with("/messages") {
            Some(Self::Anthropic)
        } else if path.ends_with("/responses") {
            Some(Self::OpenAiResponses)
        } else if path.ends_with(":generateContent") {
            Some(Self::Gemini)
        } else {
            None
        }
    }
}

fn socket() -> PathBuf {
    // Short and per checkout (a socket path holds at most 108 bytes).
    let root = env!("CARGO_MANIFEST_DIR");
    let tag = root
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    std::env::temp_dir().join(format!("selfagent-sdk-judge-{tag:08x}.sock"))
}

/// Starts the judge once per test process (and once per run, across processes).
fn ensure() -> &'static Result<PathBuf, String> {
    static STARTED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    STARTED.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let sock = socket();
        let lock = std::env::temp_dir().join("selfagent-sdk-judge.lock");
        // -o: the judge started under the lock must not hold it (it outlives this call).
        let out = std::process::Command::new("flock")
            .arg("-o")
            .arg("-w")
            .arg("900")
            .arg(&lock)
            .arg("bash")
            .arg(root.join("tests/sdk/start.sh"))
            .arg(&sock)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running tests/sdk/start.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the SDK judge did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(sock)
    })
}

/// What the judge says of `body` (a request, or a reply to send: then the SDK's own
/// serialization of it).
pub async fn judge(api: Api, kind: &str, body: &Value) -> Result<Value, String> {
    let sock = ensure().as_ref().map_err(Clone::clone)?;
    let mut last = String::new();
    // The judge may have just gone idle and be on its way out: start it again, once.
    for attempt in 0..2 {
        if attempt > 0 {
            let _ = std::process::Command::new("flock")
                .arg("-o")
                .arg(std::env::temp_dir().join("selfagent-sdk-judge.lock"))
                .arg("bash")
                .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/start.sh"))
                .arg(sock)
                .output();
        }
        let mut stream = match tokio::net::UnixStream::connect(sock).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("connecting to the SDK judge: {e}");
                continue;
            }
        };
        let line = json!({"api": api.name(), "kind": kind, "body": body}).to_string() + "\n";
        if let Err(e) = stream.write_all(line.as_bytes()).await {
            last = format!("asking the SDK judge: {e}");
            continue;
        }
        let mut answer = String::new();
        let mut reader = BufReader::new(stream);
        match tokio::time::timeout(
            std::time::Duration::from_secs(60),
            reader.read_line(&mut answer),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                last = format!("reading the SDK judge: {e}");
                continue;
            }
            Err(_) => {
                last = "the SDK judge did not answer within 60 s".into();
                continue;
            }
        }
        let v: Value = serde_json::from_str(&answer)
            .map_err(|e| format!("the SDK judge said something unreadable ({e}): {answer}"))?;
        return if v["ok"] == true {
            Ok(v["body"].clone())
        } else {
            Err(v["error"].as_str().unwrap_or("rejected").to_owned())
        };
    }
    Err(last)
}

/// The tests' Python (target/sdk-venv, made from tests/sdk/requirements.txt when missing),
/// for third-party clients such as the MCP SDK's (tests/mcp/client.py).
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("flock")
            .arg("-w")
            .arg("900")
            .arg(std::env::temp_dir().join("selfagent-sdk-judge.lock"))
            .arg("bash")
            .arg(root.join("tests/sdk/start.sh"))
            .arg("--venv")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running tests/sdk/start.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the tests' Python environment could not be made: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    found.clone().unwrap_or_else(|e| panic!("{e}"))
}
