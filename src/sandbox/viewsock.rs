//! A client of the desktop's view proxy: a local TCP port whose connections are carried
//! over a WebSocket, as noVNC's are, so a plain VNC client (the benchmark, the tests) can
//! reach the screen or a window stream the way a browser does: through the token check
//! and the view-only filter.

use std::net::SocketAddr;

/// A local TCP port that carries each connection over a WebSocket to `path` (with its
/// query: `/websockify?token=…`) at `view`, the desktop's view proxy.
pub async fn bridge(view: SocketAddr, path: String) -> std::io::Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let path = path.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio::net::TcpStream::connect(view).await else {
                    return;
                };
                let mut req = format!("GET {path} HTTP/1.1\r\nHost: {view}\r\n");
                req.push_str(
                    "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n",
                );
                if ws.write_all(req.as_bytes()).await.is_err() {
                    return;
                }
                // The response head, byte by byte (frames may follow at once).
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if ws.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                if !head.starts_with(b"HTTP/1.1 101") {
                    return;
                }
                let (mut ws_read, mut ws_write) = ws.into_split();
                let (mut client_read, mut client_write) = client.into_split();
                // Client to WebSocket: masked binary frames.
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut frame = vec![0x82u8];
                        match u16::try_from(n) {
                            Ok(small) if small < 126 => frame.push(0x80 | small as u8),
                            Ok(mid) => {
                                frame.push(0x80 | 126);
                                frame.extend_from_slice(&mid.to_be_bytes());
                            }
                            Err(_) => {
                                frame.push(0x80 | 127);
                                frame.extend_from_slice(&(n as u64).to_be_bytes());
                            }
                        }
                        let mask = [0x1b, 0x2c, 0x3d, 0x4e];
                        frame.extend_from_slice(&mask);
                        frame.extend(buf[..n].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                        if ws_write.write_all(&frame).await.is_err() {
                            break;
                        }
                    }
                });
                // WebSocket to client: unwrap the server's (unmasked) frames.
                loop {
                    let mut h = [0u8; 2];
                    if ws_read.read_exact(&mut h).await.is_err() {
                        break;
                    }
                    let mut len = u64::from(h[1] & 0x7f);
                    if len == 126 {
                        let mut l = [0u8; 2];
                        if ws_read.read_exact(&mut l).await.is_err() {
                            break;
                        }
                        len = u64::from(u16::from_be_bytes(l));
                    } else if len == 127 {
                        let mut l = [0u8; 8];
                        if ws_read.read_exact(&mut l).await.is_err() {
                            break;
                        }
                        len = u64::from_be_bytes(l);
                    }
                    // A frame larger than any screen update is not the view's: stop.
                    if len > 64 << 20 {
                        break;
                    }
                    let mut payload = vec![0u8; len as usize];
                    if ws_read.read_exact(&mut payload).await.is_err() {
                        break;
                    }
                    let opcode = h[0] & 0x0f;
                    if opcode == 0x8 {
                        break;
                    }
                    if opcode <= 0x2 && client_write.write_all(&payload).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    Ok(local)
}
