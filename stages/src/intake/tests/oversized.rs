//! Replies over the frame limit.

use super::*;

/// Goal: a reply larger than the frame limit is not written (its receiver would close the
/// connection, failing every other request on it, and between nodes drop the link): the
/// request gets `ReplyTooLarge` naming both sizes under its own id, the connection stays
/// open, and the next reply on it goes out as it is.
#[test]
fn a_reply_over_the_frame_limit_becomes_an_error_and_the_connection_stays() {
    let now = Now::real();
    let mut out = Outbox::new();
    let mut node = machine("n1", SECRET, 1);
    let client = node.accept().expect("accepted");
    let mut requests = ping();
    requests.extend(crate::wire::Message::Ping.encode(2).expect("encode"));
    node.on_received(now, client, &requests, &mut out);
    out.take();

    let huge = crate::wire::Message::Error(crate::ServiceError::Storage {
        reason: "x".repeat(2 << 20),
    });
    let frame = huge.encode(1).expect("encode");
    node.on_event(
        now,
        IntakeEvent::Send {
            conn: client,
            frame,
        },
        &mut out,
    );
    let first = written(&mut out);
    assert!(first.closed.is_empty(), "the connection stays");
    let [(conn, sent)] = first.frames.as_slice() else {
        panic!("one frame written, got {:?}", first.frames.len());
    };
    assert_eq!(*conn, client);
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.extend(sent);
    let sent = decoder.next_frame().expect("a frame").expect("whole");
    assert_eq!(sent.request_id, 1, "answers the same request");
    match crate::wire::Message::decode(&sent).expect("decodes") {
        crate::wire::Message::Error(crate::ServiceError::ReplyTooLarge { bytes, max }) => {
            assert_eq!(max, 1 << 20);
            assert!(bytes > 2 << 20, "the reply's size: {bytes}");
        }
        other => panic!("expected ReplyTooLarge, got {other:?}"),
    }

    let pong = crate::wire::Message::Pong.encode(2).expect("encode");
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
