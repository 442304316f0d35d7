//! The browser view of a demonstration: noVNC (served by the desktop's own view) connects
//! over a WebSocket to the proxy, which unwraps it into the same byte stream a VNC client
//! sends (RFC 6455: binary messages, client frames masked). The upgrade needs the
//! demonstration's token in its query (`/websockify?token=…`).

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEAD: usize = 16 << 10;
/// The largest frame taken from a browser (noVNC sends small ones).
const MAX_FRAME: u64 = 16 << 20;

/// The `Sec-WebSocket-Accept` for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The request head's path and the headers the upgrade needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    pub key: String,
    /// `binary` when the client offered it (old noVNC and websockify clients do).
    pub protocol: Option<String>,
}

/// Reads an HTTP request head for a WebSocket upgrade.
pub fn parse_upgrade(head: &str) -> Result<Upgrade, String> {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (Some("GET"), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("not a WebSocket upgrade: {first:?}"));
    };
    let mut key = None;
    let mut protocol = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-key" => key = Some(value.trim().to_owned()),
            "sec-websocket-protocol" => {
                protocol = value
                    .split(',')
                    .map(str::trim)
                    .find(|p| *p == "binary")
                    .map(str::to_owned);
            }
            _ => {}
        }
    }
    Ok(Upgrade {
        path: path.to_owned(),
        key: key.ok_or("no Sec-WebSocket-Key")?,
        protocol,
    })
}

/// The `token` query parameter of a request path.
pub fn query_token(path: &str) -> Option<&str> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|kv| kv.strip_prefix("token="))
}

/// Answers the upgrade at `stream` (whose first bytes are an HTTP request) when its token is
/// `token`, and returns the RFB byte stream inside it; refuses it otherwise.
pub async fn upgrade(mut stream: TcpStream, token: &str) -> Result<DuplexStream, String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err("a request head over 16 KiB".into());
        }
        let mut b = [0u8; 1];
        stream
            .read_exact(&mut b)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        head.push(b[0]);
    }
    let up = parse_upgrade(&String::from_utf8_lossy(&head))?;
    let given = query_token(&up.path).unwrap_or_default();
    if !crate::text::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        let _ = stream
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return Err("a view connection without the demonstration's token".into());
    }
    let mut reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(&up.key)
    );
    if let Some(p) = &up.protocol {
        reply.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    reply.push_str("\r\n");
    stream
        .write_all(reply.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let (inner, outer) = tokio::io::duplex(256 << 10);
    tokio::spawn(pump(stream, outer));
    Ok(inner)
}

/// Carries frames between the socket and the duplex until either side ends.
async fn pump(stream: TcpStream, duplex: DuplexStream) {
    let (mut sock_r, sock_w) = stream.into_split();
    let (mut dup_r, mut dup_w) = tokio::io::split(duplex);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(64);
    let writer = tokio::spawn(async move {
        let mut sock_w = sock_w;
        while let Some((opcode, payload)) = rx.recv().await {
            if write_frame(&mut sock_w, opcode, &payload).await.is_err() || opcode == 8 {
                break;
            }
        }
    });
    let data = tx.clone();
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match dup_r.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = data.send((8, Vec::new())).await;
                    break;
                }
                Ok(n) => {
                    if data.send((2, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    loop {
        match read_frame(&mut sock_r).await {
            Ok((0..=2, payload)) => {
                if dup_w.write_all(&payload).await.is_err() {
                    break;
                }
            }
            Ok((9, payload)) => {
                let _ = tx.send((10, payload)).await;
            }
            Ok((10, _)) => {}
            Ok(_) | Err(_) => {
                let _ = tx.send((8, Vec::new())).await;
                break;
            }
        }
    }
    let _ = dup_w.shutdown().await;
    outbound.abort();
    drop(tx);
    let _ = writer.await;
}

/// One frame from a client: its opcode and unmasked payload.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a {len}-byte frame")));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend((n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend((n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrades_are_read_with_their_token_and_protocol() {
        let head = "GET /websockify?token=abc&x=1 HTTP/1.1\r\nHost: h\r\nsec-websocket-key: k==\r\n\
                    Sec-WebSocket-Protocol: base64, binary\r\n\r\n";
        let up = parse_upgrade(head).expect("parses");
        assert_eq!(
            up,
            Upgrade {
                path: "/websockify?token=abc&x=1".into(),
                key: "k==".into(),
                protocol: Some("binary".into()),
            }
        );
        assert_eq!(query_token(&up.path), Some("abc"));
        assert_eq!(query_token("/websockify"), None);
        assert!(parse_upgrade("POST / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_upgrade("GET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_at_every_length_class() {
        for len in [0usize, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            // A client frame: masked.
            let mask = [1u8, 2, 3, 4];
            let mut frame = Vec::new();
            write_frame(&mut frame, 2, &payload).await.expect("writes");
            frame[1] |= 0x80;
            let at = frame.len() - len;
            let mut masked = frame[..at].to_vec();
            masked.extend(mask);
            masked.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            let (op, got) = read_frame(&mut masked.as_slice()).await.expect("reads");
            assert_eq!((op, got), (2, payload));
        }
    }
}
