//! Local tunnels into a sandbox with no network: a listener on 127.0.0.1 for each service,
//! and for each connection a `socat` run through the provider (`docker exec`) that relays to the service inside. Works
//! with remote Docker hosts too. The tunnels live as long as the process that opened them.

use super::provider::{ExecRequest, Output};
use super::{Endpoints, Sandbox, SandboxError};
use futures_util::StreamExt;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(super) async fn open(sandbox: Sandbox) -> Result<Endpoints, SandboxError> {
    let vnc = listen(sandbox.clone(), super::PORT_VNC).await?;
    let x11 = listen(sandbox, super::PORT_X11).await?;
    Ok(Endpoints {
        vnc,
        x11,
        view: None,
    })
}

async fn listen(sandbox: Sandbox, port: u16) -> Result<SocketAddr, SandboxError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| SandboxError::io("opening a local tunnel port", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SandboxError::io("opening a local tunnel port", e))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                if let Err(e) = relay(&sandbox, stream, port).await {
                    tracing::debug!("tunnel to port {port} of {}: {e}", sandbox.short_id());
                }
            });
        }
    });
    Ok(addr)
}

async fn relay(sandbox: &Sandbox, mut local: TcpStream, port: u16) -> Result<(), SandboxError> {
    local.set_nodelay(true).ok();
    let attached = sandbox
        .engine
        .provider
        .exec(
            sandbox.id(),
            ExecRequest {
                cmd: vec![
                    "socat".to_owned(),
                    "STDIO".to_owned(),
                    format!("TCP:127.0.0.1:{port},nodelay"),
                ],
                // Not the agent's user: the agent must not be able to kill its tunnels.
                user: super::SERVICES_USER.to_owned(),
                stdin: true,
                stderr: false,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SandboxError::Provider {
            doing: format!("opening a tunnel to port {port}"),
            source: Box::new(e),
        })?;
    let (mut output, mut input) = (attached.output, attached.input);
    let (mut local_read, mut local_write) = local.split();
    let upstream = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = local_read.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            input.write_all(&buf[..n]).await?;
            input.flush().await?;
        }
        input.shutdown().await
    };
    let downstream = async {
        while let Some(Ok((stream, bytes))) = output.next().await {
            if stream == Output::Stdout {
                local_write.write_all(&bytes).await?;
            }
        }
        local_write.shutdown().await
    };
    // Whichever side ends first ends the tunnel.
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
    .map_err(|e| SandboxError::io("relaying", e))
}
