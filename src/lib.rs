//! selfagent: a self-hosted runner for computer-use agents.
//!
//! Module map (docs/ARCHITECTURE.md has the data flow, the recording and the security
//! model):
//! - [`sandbox`]: desktop containers through the Docker API: the image (built from the
//!   embedded `sandbox/` context), lifecycle, limits and labels, exec, files, pruning.
//! - [`desktop`]: one VNC session and one X11 connection per sandbox: the live framebuffer,
//!   screenshots, input, settle, windows.
//! - [`action`]: the canonical [`action::Action`] set and the parser for model tool input;
//!   [`keys`]: key names and X keysyms.
//! - [`model`]: talking to models: the HTTP transport, every protocol (wire format and
//!   coordinate space, one file each), prices.
//! - [`event`]: the [`event::Event`] stream every consumer reads.
//! - [`demo`]: a person's input through a recording VNC proxy, as steps (`selfagent demo`,
//!   the TUI's take-over).
//! - [`agent`]: the computer-use loop (observe, decide, act, settle) over any protocol,
//!   reporting [`event::Event`]s.
//! - [`record`]: the SQLite recording of every episode, written from those events.
//! - [`task`]: task files (setup, limits, checks), grading, the OSWorld importer;
//!   [`regrade`]: a recorded episode graded again.
//! - [`episode`]: one episode end to end (desktop, setup, loop, checks, snapshot,
//!   recording), shared by `run` and `batch`.
//! - [`headless`]: the events as progress lines or JSON Lines.
//! - [`tui`]: the terminal UI: live runs, replay, the sessions list.
//! - [`config`]: the configuration file; [`settings`]: file, environment and flags resolved
//!   into what an episode needs.
//! - [`preflight`]: the endpoint, engine and image checked before anything starts
//!   (`selfagent doctor`, and the first second of `run` and `batch`).
//! - [`bench`]: `selfagent bench`, measured against the way the public demos do it.
//! - [`cli`]: the command line.
//! - [`process`], [`time`], [`text`], [`signals`]: process ownership, wall-clock helpers,
//!   text cut by characters, stop signals (SIGINT, SIGTERM, SIGHUP).
//!
//! The modules form layers without a cycle (docs/ARCHITECTURE.md, tests/suite/layers.rs).

pub mod action;
pub mod agent;
pub mod batch;
pub mod bench;
pub mod calibrate;
pub mod cli;
pub mod config;
pub mod demo;
pub mod desktop;
pub mod episode;
pub mod event;
pub mod export;
pub mod headless;
pub mod keys;
pub mod logs;
pub mod mcp;
pub mod model;
pub mod output;
pub mod pool;
pub mod preflight;
pub mod process;
pub mod record;
pub mod regrade;
pub mod rerun;
pub mod sandbox;
pub mod settings;
pub mod signals;
pub mod task;
pub mod text;
pub mod time;
pub mod tui;
