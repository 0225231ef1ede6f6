//! Overload: above capacity, requests are refused at once with `Overloaded`; the rest succeed
//! (SEDA admission control; SPEC §8).

use super::support::TestNode;
use shoal_stages::wire::{Bytes, Message, PutRequest};
use shoal_stages::ServiceError;

/// Goal: with tiny queues, a pipelined burst gets `Overloaded` for what does not fit and
/// success for the rest; every request gets exactly one answer; every acknowledged put is
/// readable; the stats count the rejections.
#[test]
fn burst_beyond_tiny_queues_gets_overloaded_and_the_rest_succeed() {
    let node = TestNode::start(
        "[stages.parse]\nqueue_capacity = 2\n[stages.coordinate]\nqueue_capacity = 2\n[stages.storage]\nqueue_capacity = 2\nthreads = 1\n",
    );
    let burst = 300;
    let mut client = node.client();
    for i in 0..burst {
        let put = Message::Put(PutRequest {
            key: Bytes::from(format!("k{i}").into_bytes()),
            context: None,
            value: Bytes::from(b"v".to_vec()),
            w: None,
            timeout_ms: None,
            forwarded: false,
            durable: None,
            overwrite: false,
        });
        client.send(&put).expect("send");
    }
    let (mut ok, mut overloaded) = (Vec::new(), 0);
    for _ in 0..burst {
        let (id, reply) = client.receive().expect("every request is answered");
        match reply {
            Message::PutReply(_) => ok.push(id),
            Message::Error(ServiceError::Overloaded { .. }) => overloaded += 1,
            other => panic!("unexpected reply {other}"),
        }
    }
    assert!(
        overloaded > 0,
        "a burst of {burst} into queues of 2 must overflow"
    );
    assert!(!ok.is_empty(), "requests within capacity succeed");
    assert_eq!(ok.len() + overloaded, burst);
    for id in ok {
        // Request ids start at 1 and were sent in key order.
        let key = format!("k{}", id - 1);
        let got = client.get(key.as_bytes(), Default::default()).expect("get");
        assert_eq!(
            got.values,
            vec![b"v".to_vec()],
            "acknowledged {key} is readable"
        );
    }
    let stats = client.stats().expect("stats");
    let rejected: u64 = stats.stages.iter().map(|s| s.rejected).sum();
    assert_eq!(rejected, overloaded as u64, "stats count every rejection");
}
