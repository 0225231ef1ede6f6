//! Frames past a client's limit: replies over the reply bound, and the larger frames a proven
//! peer may send.

use super::*;

/// The tests' `max_peer_frame_bytes` (see `machine_logging`).
const PEER_FRAME: usize = 2 << 20;

/// A frame answering request 1 whose whole length is exactly `bytes`.
fn reply_of(bytes: usize) -> Vec<u8> {
    let empty = crate::wire::Message::Error(crate::ServiceError::Storage {
        reason: String::new(),
    });
    let base = empty.encode(1).expect("encode").len();
    // A msgpack string's length header grows with it: find the padding that lands exactly.
    (bytes.saturating_sub(base + 8)..=bytes.saturating_sub(base))
        .rev()
        .map(|pad| {
            crate::wire::Message::Error(crate::ServiceError::Storage {
                reason: "x".repeat(pad),
            })
            .encode(1)
            .expect("encode")
        })
        .find(|frame| frame.len() == bytes)
        .expect("a padding that makes the frame exactly that long")
}

/// Goal: a reply up to `max_peer_frame_bytes` (whole frame counted) goes out as it is; one
/// byte more is not written (its receiver would close the connection, failing every other
/// request on it, and between nodes drop the link): the request gets `ReplyTooLarge` naming
/// both sizes under its own id, the connection stays open, and the next reply goes out.
#[test]
fn a_reply_over_the_reply_bound_becomes_an_error_and_the_connection_stays() {
    let now = Now::real();
    let mut out = Outbox::new();
    let mut node = machine("n1", SECRET, 1);
    let client = node.accept().expect("accepted");
    let mut requests = ping();
    requests.extend(crate::wire::Message::Ping.encode(2).expect("encode"));
    requests.extend(crate::wire::Message::Ping.encode(3).expect("encode"));
    node.on_received(now, client, &requests, &mut out);
    out.take();

    let fits = reply_of(PEER_FRAME);
    node.on_event(
        now,
        IntakeEvent::Send {
            conn: client,
            frame: fits.clone(),
        },
        &mut out,
    );
    assert_eq!(
        written(&mut out).frames,
        vec![(client, fits)],
        "at the bound: as it is"
    );

    let frame = reply_of(PEER_FRAME + 1);
    node.on_event(
        now,
        IntakeEvent::Send {
            conn: client,
            frame,
        },
        &mut out,
    );
    let over = written(&mut out);
    assert!(over.closed.is_empty(), "the connection stays");
    let [(conn, sent)] = over.frames.as_slice() else {
        panic!("one frame written, got {:?}", over.frames.len());
    };
    assert_eq!(*conn, client);
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.extend(sent);
    let sent = decoder.next_frame().expect("a frame").expect("whole");
    assert_eq!(sent.request_id, 1, "answers the same request");
    match crate::wire::Message::decode(&sent).expect("decodes") {
        crate::wire::Message::Error(crate::ServiceError::ReplyTooLarge { bytes, max }) => {
            assert_eq!((bytes, max), (PEER_FRAME as u64 + 1, PEER_FRAME as u64));
        }
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }

    let pong = crate::wire::Message::Pong.encode(3).expect("encode");
    node.on_event(
        now,
        IntakeEvent::Send {
            conn: client,
            frame: pong.clone(),
        },
        &mut out,
    );
    assert_eq!(written(&mut out).frames, vec![(client, pong)]);
}

/// Goal: a frame over `max_frame_bytes` (1 MiB here) but within `max_peer_frame_bytes` is
/// taken from a peer whose handshake completed (a key's versions merged on replicas may be
/// that large), and refused, closing the connection, from anyone else: a client, or a
/// dialled address that has not proven itself.
#[test]
fn only_a_proven_peer_may_send_frames_past_the_client_limit() {
    let now = Now::real();
    let large = reply_of(PEER_FRAME - 1024);
    let mut out = Outbox::new();

    let mut node = machine("n1", SECRET, 1);
    let client = node.accept().expect("accepted");
    node.on_received(now, client, &large, &mut out);
    assert_eq!(written(&mut out).closed, vec![client], "a client may not");

    let mut unproven = machine("n1", SECRET, 1);
    unproven.on_event(now, to_peer(&ping()), &mut out);
    let link = written(&mut out).dialled[0];
    unproven.on_received(now, link, &large, &mut out);
    assert_eq!(
        written(&mut out).closed,
        vec![link],
        "nor an unproven dialled link"
    );

    let (mut dialer, mut receiver) = (machine("n1", SECRET, 1), machine("n2", SECRET, 2));

    let (link, incoming, proof) = dial_and_answer(&mut dialer, &mut receiver, now, &mut out);
    let bytes: Vec<u8> = proof.frames.iter().flat_map(|(_, f)| f.clone()).collect();
    receiver.on_received(now, incoming, &bytes, &mut out);
    assert_eq!(written(&mut out).closed, vec![], "the proof is accepted");
    let request = crate::wire::Message::Ping.encode(7).expect("encode");
    let mut big_then_ping = large.clone();
    big_then_ping.extend(request);
    receiver.on_received(now, incoming, &big_then_ping, &mut out);
    let r = written(&mut out);
    assert!(r.closed.is_empty(), "a proven peer's large frame is taken");
    dialer.on_received(now, link, &large, &mut out);
    assert!(
        written(&mut out).closed.is_empty(),
        "and the dialer takes large answers"
    );
}
