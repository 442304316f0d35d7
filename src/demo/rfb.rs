//! The RFB (VNC) protocol as the demonstration proxy needs it: the server side of the
//! handshake towards the person's client (with the proxy's own password), the client side
//! towards the desktop (with the desktop's), and a reader that splits the client's byte
//! stream into messages, so input events can be seen while every byte is passed on.
//!
//! RFC 6143 describes all of it. VNC authentication is DES over a 16-byte challenge with
//! the password (8 bytes, zero-padded) as key, each key byte's bits reversed.

use super::gesture::Input;
use des::Des;
use des::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest clipboard text passed on (the desktop's own limit is smaller).
const MAX_CUT_TEXT: usize = 16 << 20;
/// The longest fence payload RFC 6143's extension allows.
const MAX_FENCE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the client's password is wrong")]
    BadPassword,
}

/// The VNC authentication response to `challenge` for `password`.
pub fn vnc_auth_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = Des::new(GenericArray::from_slice(&key));
    let mut out = *challenge;
    for block in out.chunks_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

/// One message of the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Passed on as it is.
    Forward,
    /// An input event (also passed on).
    Input(Input),
    /// Not passed on: a resize of the desktop's screen, which a recording at one size
    /// cannot follow.
    Drop,
}

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The first message in `buf`: its length and what it is, `Ok(None)` while it is
/// incomplete, an error for a message this proxy cannot size (the connection then ends).
pub fn next_message(buf: &[u8]) -> Result<Option<(usize, Message)>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let need = |n: usize| buf.len() >= n;
    let fixed = |n: usize, m: Message| Ok(need(n).then_some((n, m)));
    match kind {
        // SetPixelFormat, FramebufferUpdateRequest, EnableContinuousUpdates.
        0 => fixed(20, Message::Forward),
        3 => fixed(10, Message::Forward),
        150 => fixed(10, Message::Forward),
        2 => {
            if !need(4) {
                return Ok(None);
            }
            let n = 4 + 4 * be16(&buf[2..]);
            fixed(n, Message::Forward)
        }
        4 => {
            if !need(8) {
                return Ok(None);
            }
            let input = Input::Key {
                keysym: be32(&buf[4..]),
                down: buf[1] != 0,
            };
            Ok(Some((8, Message::Input(input))))
        }
        5 => {
            if !need(6) {
                return Ok(None);
            }
            let input = Input::Pointer {
                buttons: buf[1],
                x: be16(&buf[2..]) as u16,
                y: be16(&buf[4..]) as u16,
            };
            Ok(Some((6, Message::Input(input))))
        }
        6 => {
            if !need(8) {
                return Ok(None);
            }
            // Negative lengths are the extended clipboard's: the size is their magnitude.
            let len = (be32(&buf[4..]) as i32).unsigned_abs() as usize;
            if len > MAX_CUT_TEXT {
                return Err(format!("clipboard text of {len} bytes is too long"));
            }
            fixed(8 + len, Message::Forward)
        }
        248 => {
            if !need(9) {
                return Ok(None);
            }
            let len = usize::from(buf[8]);
            if len > MAX_FENCE {
                return Err(format!("a fence of {len} bytes"));
            }
            fixed(9 + len, Message::Forward)
        }
        251 => {
            if !need(8) {
                return Ok(None);
            }
            let n = 8 + 16 * usize::from(buf[6]);
            fixed(n, Message::Drop)
        }
        255 => {
            if !need(2) {
                return Ok(None);
            }
            if buf[1] != 0 {
                return Err(format!("QEMU client message subtype {}", buf[1]));
            }
            if !need(12) {
                return Ok(None);
            }
            // The QEMU extended key event: keysym and the raw keycode.
            let input = Input::Key {
                keysym: be32(&buf[4..]),
                down: be16(&buf[2..]) != 0,
            };
            Ok(Some((12, Message::Input(input))))
        }
        other => Err(format!("unknown client message type {other}")),
    }
}

/// The server side of the handshake with the person's client, up to (not including) the
/// ServerInit: returns the client's shared flag.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    password: &str,
) -> Result<u8, RfbError> {
    s.write_all(b"RFB 003.008\n").await?;
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await?;
    let minor = match &version {
        b"RFB 003.003\n" => 3,
        b"RFB 003.007\n" => 7,
        v if v.starts_with(b"RFB 003.") => 8,
        _ => {
            return Err(RfbError::Protocol(format!(
                "not an RFB client (it said {:?})",
                String::from_utf8_lossy(&version)
            )));
        }
    };
    if minor == 3 {
        s.write_all(&2u32.to_be_bytes()).await?;
    } else {
        s.write_all(&[1, 2]).await?;
        let mut chosen = [0u8; 1];
        s.read_exact(&mut chosen).await?;
        if chosen[0] != 2 {
            return Err(RfbError::Protocol(format!(
                "the client chose security type {}, not VNC authentication",
                chosen[0]
            )));
        }
    }
    let challenge: [u8; 16] = rand::random();
    s.write_all(&challenge).await?;
    let mut response = [0u8; 16];
    s.read_exact(&mut response).await?;
    let expected = vnc_auth_response(password, &challenge);
    if !crate::text::constant_time_eq(&expected, &response) {
        s.write_all(&1u32.to_be_bytes()).await?;
        if minor == 8 {
            let reason = b"authentication failed";
            s.write_all(&(reason.len() as u32).to_be_bytes()).await?;
            s.write_all(reason).await?;
        }
        return Err(RfbError::BadPassword);
    }
    s.write_all(&0u32.to_be_bytes()).await?;
    let mut shared = [0u8; 1];
    s.read_exact(&mut shared).await?;
    Ok(shared[0])
}

/// The client side of the handshake with the desktop's server, asking to share it (the
/// recording's own connection stays): returns the ServerInit message, for the person's
/// client.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    password: &str,
) -> Result<Vec<u8>, RfbError> {
    let mut version = [0u8; 12];
    s.read_exact(&mut version).await?;
    if !version.starts_with(b"RFB 003.") {
        return Err(RfbError::Protocol(
            "the desktop is not an RFB server".into(),
        ));
    }
    s.write_all(b"RFB 003.008\n").await?;
    let mut count = [0u8; 1];
    s.read_exact(&mut count).await?;
    if count[0] == 0 {
        return Err(RfbError::Protocol(format!(
            "the desktop refused: {}",
            read_reason(s).await?
        )));
    }
    let mut types = vec![0u8; usize::from(count[0])];
    s.read_exact(&mut types).await?;
    if types.contains(&2) {
        s.write_all(&[2]).await?;
        let mut challenge = [0u8; 16];
        s.read_exact(&mut challenge).await?;
        s.write_all(&vnc_auth_response(password, &challenge))
            .await?;
    } else if types.contains(&1) {
        s.write_all(&[1]).await?;
    } else {
        return Err(RfbError::Protocol(format!(
            "the desktop offers no security type this proxy speaks ({types:?})"
        )));
    }
    let mut result = [0u8; 4];
    s.read_exact(&mut result).await?;
    if u32::from_be_bytes(result) != 0 {
        return Err(RfbError::Protocol(format!(
            "the desktop refused its own password: {}",
            read_reason(s).await.unwrap_or_default()
        )));
    }
    s.write_all(&[1]).await?;
    let mut init = vec![0u8; 24];
    s.read_exact(&mut init).await?;
    let name_len = be32(&init[20..]) as usize;
    if name_len > 4096 {
        return Err(RfbError::Protocol("a desktop name over 4 KiB".into()));
    }
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name).await?;
    init.extend(name);
    Ok(init)
}

async fn read_reason<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, RfbError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = (u32::from_be_bytes(len) as usize).min(4096);
    let mut reason = vec![0u8; len];
    s.read_exact(&mut reason).await?;
    Ok(String::from_utf8_lossy(&reason).into_owned())
}

#[cfg(test)]
#[path = "rfb_tests.rs"]
mod tests;
