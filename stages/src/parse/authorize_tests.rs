//! Who may send what: peer-only requests refused from connections that proved nothing.

use super::*;
use crate::wire::{Bytes, PutRequest, ReplicaRead};

/// Goal: from an unproven connection, peer-only requests are refused and a put's
/// `forwarded` flag is dropped; from a proven peer both pass unchanged. Reference: SPEC §11.
#[test]
fn unproven_connections_get_no_peer_powers() {
    let read = Message::ReplicaRead(ReplicaRead {
        key: Bytes::from(b"k".to_vec()),
    });
    assert!(matches!(
        authorize(read.clone(), false),
        Err(ServiceError::Unauthorized { .. })
    ));
    assert_eq!(authorize(read.clone(), true), Ok(read));
    let put = Message::Put(PutRequest {
        key: Bytes::from(b"k".to_vec()),
        context: None,
        value: Bytes::from(b"v".to_vec()),
        w: None,
        timeout_ms: None,
        forwarded: true,
        durable: None,
        overwrite: false,
    });
    assert!(matches!(
        authorize(put.clone(), false),
        Ok(Message::Put(PutRequest {
            forwarded: false,
            ..
        }))
    ));
    assert_eq!(authorize(put.clone(), true), Ok(put));
}
