use super::*;
use pretty_assertions::assert_eq;

fn messages() -> Vec<(Vec<u8>, Message)> {
    let mut set_encodings = vec![2, 0, 0, 3];
    for e in [0i32, 1, -239] {
        set_encodings.extend(e.to_be_bytes());
    }
    let mut cut = vec![6, 0, 0, 0, 0, 0, 0, 5];
    cut.extend(b"hello");
    let mut fence = vec![248, 0, 0, 0, 0, 0, 0, 0, 2];
    fence.extend([7, 7]);
    let mut resize = vec![251, 0, 0x07, 0x80, 0x04, 0x38, 1, 0];
    resize.extend([0u8; 16]);
    vec![
        (vec![0; 20], Message::Forward),
        (set_encodings, Message::Forward),
        (vec![3, 1, 0, 0, 0, 0, 5, 0, 3, 32], Message::Forward),
        (
            vec![4, 1, 0, 0, 0, 0, 0xff, 0x0d],
            Message::Input(Input::Key {
                keysym: 0xff0d,
                down: true,
            }),
        ),
        (
            vec![5, 1, 0x01, 0x2c, 0x00, 0xc8],
            Message::Input(Input::Pointer {
                x: 300,
                y: 200,
                buttons: 1,
            }),
        ),
        (cut, Message::Forward),
        (vec![150, 1, 0, 0, 0, 0, 5, 0, 3, 32], Message::Forward),
        (fence, Message::Forward),
        (resize, Message::Drop),
        (
            vec![255, 0, 0, 0, 0, 0, 0, 0x61, 0, 0, 0, 38],
            Message::Input(Input::Key {
                keysym: 0x61,
                down: false,
            }),
        ),
    ]
}

#[test]
fn every_client_message_is_sized_and_incomplete_ones_wait() {
    for (bytes, expected) in messages() {
        for cut in 0..bytes.len() {
            assert_eq!(
                next_message(&bytes[..cut]),
                Ok(None),
                "{bytes:?} cut at {cut}"
            );
        }
        let mut more = bytes.clone();
        more.extend([5, 0, 0, 0]);
        assert_eq!(
            next_message(&more),
            Ok(Some((bytes.len(), expected))),
            "{bytes:?}"
        );
    }
}

#[test]
fn a_stream_splits_into_the_same_messages_however_it_arrives() {
    let all = messages();
    let stream: Vec<u8> = all.iter().flat_map(|(b, _)| b.clone()).collect();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for chunk in stream.chunks(3) {
        buf.extend_from_slice(chunk);
        while let Some((n, m)) = next_message(&buf).expect("valid") {
            seen.push(m);
            buf.drain(..n);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(seen, all.into_iter().map(|(_, m)| m).collect::<Vec<_>>());
}

#[test]
fn unknown_or_oversized_messages_are_errors_not_panics() {
    assert!(next_message(&[99]).is_err());
    assert!(next_message(&[255, 1, 0, 0]).is_err());
    assert!(next_message(&[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
    let mut seed = 7u64;
    for _ in 0..50_000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed >> 59) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
        if let Ok(Some((n, _))) = next_message(&bytes) {
            assert!(n <= bytes.len());
        }
    }
}

#[tokio::test]
async fn both_handshakes_meet_and_a_wrong_password_is_refused() {
    // The proxy's server side against its own client side, with a server init after.
    let (mut a, mut b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        let shared = accept(&mut a, "s3cret!x").await?;
        let mut init = vec![0, 80, 0, 50];
        init.extend([0u8; 16]);
        init.extend(4u32.to_be_bytes());
        init.extend(b"desk");
        a.write_all(&init).await?;
        Ok::<u8, RfbError>(shared)
    });
    let init = connect(&mut b, "s3cret!x").await.expect("connects");
    assert_eq!(&init[..4], &[0, 80, 0, 50]);
    assert_eq!(&init[24..], b"desk");
    assert_eq!(
        server.await.expect("joins").expect("accepts"),
        1,
        "asks to share"
    );

    let (mut a, mut b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move { accept(&mut a, "right").await });
    let client = connect(&mut b, "wrong").await;
    assert!(matches!(
        server.await.expect("joins"),
        Err(RfbError::BadPassword)
    ));
    let Err(RfbError::Protocol(msg)) = client else {
        panic!("{client:?}");
    };
    assert!(msg.contains("authentication failed"), "{msg}");
}

#[test]
fn the_des_key_is_the_password_with_its_bits_reversed() {
    // Only the first 8 characters count, as in every VNC server.
    let c = [9u8; 16];
    assert_eq!(
        vnc_auth_response("abcdefgh", &c),
        vnc_auth_response("abcdefghXYZ", &c)
    );
    assert_ne!(
        vnc_auth_response("abcdefgh", &c),
        vnc_auth_response("abcdefgi", &c)
    );
    // DES ignores each key byte's lowest bit (parity): 'a' and '`' differ only there, so
    // they are different keys only because the bits are reversed, as VNC does.
    assert_ne!(vnc_auth_response("a", &c), vnc_auth_response("`", &c));
}
