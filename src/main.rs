//! The `selfagent` binary: parses the command line and runs it (see `selfagent --help`).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = selfagent::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SELFAGENT_LOG")
                // vnc-rs logs a normal close as an error; we report VNC failures ourselves.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vnc=off")),
        )
        .with_writer(selfagent::logs::Writer)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let result = selfagent::cli::run(cli).await;
        // Pool desktops this process leased are being replaced: finish them rather than
        // leave one half made.
        selfagent::pool::finish_refills(std::time::Duration::from_secs(120)).await;
        result
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
