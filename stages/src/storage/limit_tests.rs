//! Storage's bounds (`store/limits.rs`): the longest key, and the largest versions a
//! coordinated put may leave.

use super::tests::{engines, put, written_by_n2, LIMITS};
use super::*;
use crate::vclock::VClock;

/// Goal: a key of the longest storable length is written, read, merged and kept as a hint for
/// a node of the longest id, on fjall (whose own key bound, 65535, panics past it), and one
/// byte more is refused with `KeyTooLong` on every path. Keys of 65530 bytes once panicked
/// inside fjall (storage adds its own bytes before a client's key).
#[test]
fn the_longest_storable_key_is_kept_on_every_path_and_a_longer_one_refused() {
    for (name, store, _dir) in engines() {
        let key = vec![b'k'; MAX_STORABLE_KEY_BYTES];
        let (set, _) = put(&store, &key, &VClock::new(), b"v");
        assert_eq!(store.read(&key).expect("read"), set, "{name}");
        store.merge(&key, &written_by_n2(b"w", 2)).expect("merge");
        let target = NodeId::new("t".repeat(crate::node_id::MAX_NODE_ID_BYTES).as_str());
        store.store_hint(&target, &key, &set).expect("hint");
        let longer = vec![b'k'; MAX_STORABLE_KEY_BYTES + 1];
        let refused = |result: Result<(), StorageError>| {
            assert!(
                matches!(result, Err(StorageError::KeyTooLong { .. })),
                "{name}: {result:?}"
            )
        };
        refused(store.read(&longer).map(drop));
        refused(
            store
                .coordinate_put(&longer, &VClock::new(), Some(b"v".to_vec()), 1, &LIMITS)
                .map(drop),
        );
        refused(store.merge(&longer, &set).map(drop));
        refused(store.store_hint(&target, &longer, &set).map(drop));
    }
}

/// Goal: a put that would leave a key's versions larger than one frame carries is refused
/// with `ObjectTooLarge` and stores nothing (the stored value still reads back), while a put
/// with the context, which replaces what it covers, is taken. Two blind puts of 600 KiB under
/// a 1.1 MB frame once made a key that no get, replica write or transfer could carry.
#[test]
fn a_put_past_what_a_frame_carries_is_refused_and_stores_nothing() {
    let limits = VersionLimits {
        max_frame_bytes: 1_130_505,
        ..LIMITS
    };
    let big = vec![7u8; 600 << 10];
    for (name, store, _dir) in engines() {
        let put_big =
            |context: &VClock| store.coordinate_put(b"k", context, Some(big.clone()), 1, &limits);
        let (first, _) = put_big(&VClock::new()).expect("one value fits");
        let refused = put_big(&VClock::new());
        let max = limits.max_object_bytes(b"k");
        match refused {
            Err(StorageError::ObjectTooLarge {
                bytes,
                versions: 2,
                max: m,
            }) => assert!(bytes > m && m == max, "{name}: {bytes} over {m}"),
            other => panic!("{name}: expected ObjectTooLarge, got {other:?}"),
        }
        assert_eq!(
            store.read(b"k").expect("read"),
            first,
            "{name}: nothing stored"
        );
        let (replaced, _) = put_big(&first.context()).expect("a reconciling put fits");
        assert_eq!(replaced.len(), 1, "{name}");
    }
}
