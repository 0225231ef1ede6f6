//! The reply writer (issue 12): a busy loop turn's output is written by another thread. Its
//! replies must reach each client whole, each once, including the output a full socket did not
//! take (handed back to the loop) and frames queued while a connection's output was at the
//! writer; and a client that stops sending still gets its answers. (Pipelined replies are
//! matched by request id: the node never promised their order, and with or without the writer
//! a later small get may overtake an earlier large one.)

use super::support::{replies_to_a_client_that_never_reads, TestNode, SLOW_READER_LIMITS};
use shoal::client::{Client, ClientError, RequestOptions};
use shoal_stages::wire::{Bytes, GetRequest, Message};
use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Duration;

const DEFAULT: RequestOptions = RequestOptions::DEFAULT;

/// Every turn with a connection to write hands it to the writer (the most it ever does).
const WRITER_ALWAYS: &str = "[pool]\nreply_writer_from = 1\n";

/// The writer on every turn, with room for 120 KB values and 12 MB of unsent replies.
const WRITER_EVERY_TURN: &str = "[pool]\nreply_writer_from = 1\n\
    [limits]\nmax_value_bytes = 200000\nmax_frame_bytes = 300000\n\
    max_write_buffer_bytes = 67108864\n";

/// A value of `len` bytes that says which key it belongs to in every byte.
fn value_of(key: usize, len: usize) -> Vec<u8> {
    vec![(key % 251) as u8; len]
}

fn get(key: &[u8]) -> Message {
    Message::Get(GetRequest {
        key: Bytes::from(key.to_vec()),
        r: None,
        timeout_ms: None,
    })
}

/// Goal: clients that pipeline far more reply bytes than a socket holds (so the writer meets
/// full sockets and hands output back) get every reply whole, each once, with the right value;
/// small and large replies interleave on one connection.
#[test]
fn pipelined_replies_through_the_reply_writer_arrive_whole_and_each_once() {
    let node = TestNode::start(WRITER_EVERY_TURN);
    let keys = 8;
    let mut loader = node.client();
    for key in 0..keys {
        // Odd keys are large (120 KB), even keys small (10 B).
        let len = if key % 2 == 1 { 120_000 } else { 10 };
        loader
            .put(
                format!("k{key}").as_bytes(),
                None,
                &value_of(key, len),
                DEFAULT,
            )
            .expect("put");
    }
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let mut client: Client = node.client();
            thread::spawn(move || {
                // 200 gets per client, ~12 MB of replies, more than loopback's socket buffers
                // hold while the client waits before its first read.
                let order: Vec<usize> = (0..200).map(|i| (i * 7 + c) % keys).collect();
                let ids: Vec<u64> = order
                    .iter()
                    .map(|key| client.send(&get(format!("k{key}").as_bytes())))
                    .collect::<Result<_, _>>()
                    .expect("send");
                thread::sleep(Duration::from_millis(300));
                let mut asked: BTreeMap<u64, usize> = ids.into_iter().zip(order).collect();
                while !asked.is_empty() {
                    let (id, reply) = client.receive().expect("every reply arrives");
                    let key = asked.remove(&id).expect("a reply to a request asked, once");
                    let Message::GetReply(reply) = reply else {
                        panic!("a get answered with {reply:?}");
                    };
                    let len = if key % 2 == 1 { 120_000 } else { 10 };
                    assert_eq!(reply.values.len(), 1, "one version of k{key}");
                    assert!(
                        reply.values[0].as_ref() == value_of(key, len).as_slice(),
                        "k{key}'s reply is whole and its own"
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client saw a wrong reply");
    }
}

/// Goal: with the writer taking every turn, a client that never reads is still cut off at its
/// output bound (output handed back by the writer counts), and others are served meanwhile.
#[test]
fn a_client_that_never_reads_is_dropped_with_the_writer_on() {
    let node = TestNode::start(&format!("{WRITER_ALWAYS}{SLOW_READER_LIMITS}"));
    let requests = 400;
    let received = replies_to_a_client_that_never_reads(&node, 90_000, requests, Duration::ZERO);
    assert!(
        received < requests,
        "the hog received all {received} replies: it was never dropped"
    );
}

/// Goal: a client that never reads and asks one small reply at a time (so each turn hands the
/// writer one connection's output, which the full socket refuses) is still cut off at its
/// output bound: what the writer holds and what it hands back count against the bound.
#[test]
fn a_slow_reader_asking_one_reply_at_a_time_is_dropped_with_the_writer_on() {
    let node = TestNode::start(&format!("{WRITER_ALWAYS}{SLOW_READER_LIMITS}"));
    // 3000 replies of 10 KB: 30 MB, several times what loopback's socket buffers hold.
    let requests = 3000;
    let pause = Duration::from_micros(100);
    let received = replies_to_a_client_that_never_reads(&node, 10_000, requests, pause);
    assert!(
        received < requests,
        "the hog received all {received} replies: its output was never bounded"
    );
}

/// Goal: a client that shuts its sending side right after its last request (as `nc -N` or a
/// shell pipe does) still gets an answer to every request, then the node closes the
/// connection; before, the node closed it on the end of stream and the answers were lost.
#[test]
fn a_client_that_stops_sending_after_its_requests_gets_every_answer() {
    let node = TestNode::start("");
    let mut loader = node.client();
    loader.put(b"half", None, b"closed", DEFAULT).expect("put");
    let mut client = node.client();
    let mut sent = BTreeSet::new();
    for _ in 0..20 {
        sent.insert(client.send(&get(b"half")).expect("send"));
    }
    client.finish_sending().expect("shutdown(Write)");
    loop {
        match client.receive() {
            Ok((id, Message::GetReply(reply))) => {
                assert!(sent.remove(&id), "answer to request {id}, once");
                assert_eq!(reply.values.len(), 1, "{reply:?}");
            }
            Ok((id, other)) => panic!("request {id}: unexpected {other}"),
            Err(ClientError::Closed { .. }) => break,
            Err(e) => panic!("the node neither answered nor closed: {e}"),
        }
    }
    assert!(sent.is_empty(), "unanswered: {sent:?}");
}
