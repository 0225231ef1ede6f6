//! Parsing a frame: kinds checked, bodies decoded exactly, sizes and contexts validated, errors
//! typed.

use super::*;
use crate::vclock::VClock;
use crate::wire::{Bytes, DeleteRequest, GetRequest, PutReply, PutRequest};

fn settings() -> ParseSettings {
    ParseSettings {
        max_key_bytes: 8,
        max_value_bytes: 16,
        seal: ContextSeal::new(b"parse-tests-secret-0123"),
        max_replica_versions: 4,
        replicas: 1,
        request_timeout: std::time::Duration::from_secs(2),
    }
}

fn put(key: &[u8], value: &[u8], context: Option<Vec<u8>>) -> Message {
    Message::Put(PutRequest {
        key: Bytes::from(key.to_vec()),
        context: context.map(Bytes::from),
        value: Bytes::from(value.to_vec()),
        w: Some(2),
        timeout_ms: Some(250),
        forwarded: false,
        durable: None,
        overwrite: false,
    })
}

/// Goal: limits are enforced exactly at their bounds, with errors that carry the numbers.
#[test]
fn key_and_value_limits_are_exact() {
    let s = settings();
    assert!(validate(&s, put(&[1; 8], &[1; 16], None)).is_ok());
    assert_eq!(
        validate(&s, put(&[1; 9], b"v", None)),
        Err(ServiceError::InvalidKey { size: 9, max: 8 })
    );
    assert_eq!(
        validate(&s, put(b"", b"v", None)),
        Err(ServiceError::InvalidKey { size: 0, max: 8 })
    );
    assert_eq!(
        validate(&s, put(b"k", &[1; 17], None)),
        Err(ServiceError::ValueTooLarge { size: 17, max: 16 })
    );
}

/// Goal: a valid put carries its decoded context, quorum and deadline to the coordinator;
/// a delete becomes a put of a tombstone.
#[test]
fn valid_requests_become_typed_client_requests() {
    let s = settings();
    let clock = VClock::new().with_entry("n1", 2, 5);
    let sealed = s.seal.encode(b"k", &clock);
    let request = validate(&s, put(b"k", b"v", Some(sealed.clone()))).expect("valid");
    assert_eq!(
        request,
        Routed::Client(ClientRequest::Put {
            key: b"k".to_vec(),
            context: clock.clone(),
            value: Some(b"v".to_vec()),
            w: Some(2),
            timeout: Some(Duration::from_millis(250)),
            forwarded: false,
            durable: None,
            overwrite: false,
        })
    );
    let delete = Message::Delete(DeleteRequest {
        key: Bytes::from(b"k".to_vec()),
        context: Bytes::from(sealed),
        w: None,
        timeout_ms: None,
        forwarded: false,
        durable: None,
    });
    assert!(matches!(
        validate(&s, delete),
        Ok(Routed::Client(ClientRequest::Put { value: None, .. }))
    ));
    let get = Message::Get(GetRequest {
        key: Bytes::from(b"k".to_vec()),
        r: Some(1),
        timeout_ms: None,
    });
    assert!(matches!(
        validate(&s, get),
        Ok(Routed::Client(ClientRequest::Get { r: Some(1), .. }))
    ));
}

/// Goal: replies sent as requests, forged contexts and deletes with an empty context are
/// refused with their own errors.
#[test]
fn replies_and_forged_contexts_are_refused() {
    let s = settings();
    let reply = Message::PutReply(PutReply {
        context: Bytes::from(vec![]),
        membership_version: 0,
        durable: 0,
    });
    assert_eq!(
        validate(&s, reply),
        Err(ServiceError::NotARequest {
            kind: crate::wire::kind::PUT_REPLY
        })
    );
    let foreign = ContextSeal::new(b"some-other-cluster-secret")
        .encode(b"k", &VClock::new().with_entry("n1", 9, 1));
    assert!(matches!(
        validate(&s, put(b"k", b"v", Some(foreign))),
        Err(ServiceError::BadContext { .. })
    ));
    // A delete with an empty context (no bytes, or a sealed empty clock) would delete
    // nothing: refused, where a put with one is a blind write.
    for context in [Vec::new(), s.seal.encode(b"k", &VClock::new())] {
        let delete = Message::Delete(DeleteRequest {
            key: Bytes::from(b"k".to_vec()),
            context: Bytes::from(context),
            w: None,
            timeout_ms: None,
            forwarded: false,
            durable: None,
        });
        assert!(
            matches!(validate(&s, delete), Err(ServiceError::BadContext { reason }) if reason.contains("deletes nothing"))
        );
    }
}

/// Goal: a fallback's batch of hints is peer-only, each object is checked like a replica
/// write (an oversized value refuses the whole batch, naming the limit), and a valid batch
/// goes to the handoff stage with every object.
#[test]
fn a_handoff_batch_is_peer_only_checked_and_routed_to_handoff() {
    use crate::wire::{AaeObject, HandoffBatch};
    let object = |value: &[u8]| {
        let mut versions = VersionSet::new();
        versions
            .coordinate_put(
                &crate::NodeId::new("n2"),
                &VClock::new(),
                Some(value.to_vec()),
                1,
                4,
            )
            .expect("a version");
        AaeObject {
            key: Bytes::from(b"k".to_vec()),
            versions,
        }
    };
    let batch = |objects| Message::HandoffBatch(HandoffBatch { objects });
    assert!(matches!(
        authorize(batch(vec![object(b"v")]), false),
        Err(ServiceError::Unauthorized { .. })
    ));
    assert!(matches!(
        validate(&settings(), batch(vec![object(b"v"), object(b"w")])),
        Ok(Routed::Handoff { objects }) if objects.len() == 2
    ));
    assert_eq!(
        validate(&settings(), batch(vec![object(b"v"), object(&[0; 17])])).err(),
        Some(ServiceError::ValueTooLarge { size: 17, max: 16 })
    );
}

/// Goal: a peer's versions whose dots and clock entries name the longest actor a node can have
/// (its longest name, `@`, a 20-digit epoch) are accepted; a longer name is refused.
#[test]
fn versions_naming_the_longest_actors_pass_and_longer_names_do_not() {
    use crate::node_id::{MAX_ACTOR_BYTES, MAX_NODE_ID_BYTES};
    use crate::NodeId;
    let set_by = |actor: &NodeId| {
        let mut set = VersionSet::new();
        set.coordinate_put(actor, &VClock::new(), Some(b"a".to_vec()), 1, 10)
            .expect("first");
        let context = set.context();
        set.coordinate_put(actor, &context, Some(b"b".to_vec()), 2, 10)
            .expect("second");
        assert!(set.versions()[0].past.entries().any(|(n, _)| n == actor));
        set
    };
    let longest = NodeId::new(format!("{}@{}", "n".repeat(MAX_NODE_ID_BYTES), u64::MAX));
    assert_eq!(longest.as_str().len(), MAX_ACTOR_BYTES);
    assert!(check_versions(&settings(), set_by(&longest)).is_ok());
    let longer = NodeId::new("n".repeat(MAX_ACTOR_BYTES + 1));
    assert!(matches!(
        check_versions(&settings(), set_by(&longer)),
        Err(ServiceError::MalformedFrame { .. })
    ));
}
