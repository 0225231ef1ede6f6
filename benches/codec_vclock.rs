//! Micro benchmarks of the hot pure code: the frame codec, vector clocks / version sets, and
//! ring lookups (MD5 of the key and the preference-list walk), and a coordinator's replicas
//! of a key before and after a membership change.
//! Run: `cargo bench --bench codec_vclock`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_stages::membership::{Member, Membership, MembershipView};
use shoal_stages::ring::{NodeSpec, Ring};
use shoal_stages::vclock::VClock;
use shoal_stages::versioning::VersionSet;
use shoal_stages::wire::{
    decode_version_set, encode_version_set, Bytes, ContextSeal, FrameDecoder, Message, PutRequest,
};
use shoal_stages::NodeId;
use std::hint::black_box;
use std::net::SocketAddr;

fn put_message(value_bytes: usize) -> Message {
    let context = VClock::new()
        .with_entry("n1", 12, 1)
        .with_entry("n2", 7, 2)
        .with_entry("n3", 3, 3);
    Message::Put(PutRequest {
        key: Bytes::from(b"user:0000012345".to_vec()),
        context: Some(Bytes::from(
            ContextSeal::new(b"bench-secret-0123456789").encode(b"user000000000042", &context),
        )),
        value: Bytes::from(vec![7u8; value_bytes]),
        w: Some(2),
        timeout_ms: None,
        forwarded: false,
        durable: None,
        overwrite: false,
    })
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [100usize, 4096] {
        let message = put_message(size);
        let frame = message.encode(1).expect("encode");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("encode_put_{size}B"), |b| {
            b.iter(|| black_box(&message).encode(1).expect("encode"))
        });
        group.bench_function(format!("decode_put_{size}B"), |b| {
            b.iter(|| {
                let mut decoder = FrameDecoder::new(1 << 20);
                decoder.extend(black_box(&frame));
                let frame = decoder.next_frame().expect("ok").expect("complete");
                Message::decode(&frame).expect("decode")
            })
        });
    }
    let seal = ContextSeal::new(b"bench-secret-0123456789");
    let context = seal.encode(
        b"user000000000042",
        &VClock::new().with_entry("n1", 12, 1).with_entry("n2", 7, 2),
    );
    group.bench_function("open_sealed_context", |b| {
        b.iter(|| {
            seal.decode(b"user000000000042", black_box(&context))
                .expect("ok")
        })
    });
    group.finish();
}

fn set_with_siblings(siblings: usize) -> VersionSet {
    let mut set = VersionSet::new();
    for i in 0..siblings {
        let node = NodeId::new(format!("n{}", i % 3 + 1));
        set.coordinate_put(&node, &VClock::new(), Some(vec![1; 100]), i as u64, 10)
            .expect("fits");
    }
    set
}

fn vclock(c: &mut Criterion) {
    let mut group = c.benchmark_group("vclock");
    let a = VClock::new()
        .with_entry("n1", 5, 1)
        .with_entry("n2", 3, 1)
        .with_entry("n3", 9, 1);
    let b2 = VClock::new()
        .with_entry("n1", 4, 1)
        .with_entry("n2", 6, 1)
        .with_entry("n3", 9, 1);
    group.bench_function("compare_3_entries", |b| {
        b.iter(|| black_box(&a).compare(black_box(&b2)))
    });
    group.bench_function("merge_3_entries", |b| {
        b.iter(|| {
            let mut m = black_box(&a).clone();
            m.merge(black_box(&b2));
            m
        })
    });
    for siblings in [1usize, 3] {
        let set = set_with_siblings(siblings);
        let context = set.context();
        let node = NodeId::new("n1");
        group.bench_function(format!("coordinate_put_over_{siblings}_siblings"), |b| {
            b.iter(|| {
                let mut s = set.clone();
                s.coordinate_put(&node, &context, Some(vec![2; 100]), 99, 10)
                    .expect("fits")
            })
        });
        let other = set_with_siblings(siblings + 1);
        group.bench_function(format!("merge_sets_{siblings}_siblings"), |b| {
            b.iter(|| {
                let mut s = set.clone();
                s.merge(black_box(&other));
                s
            })
        });
        let stored = encode_version_set(&set).expect("encodes");
        group.bench_function(format!("decode_stored_set_{siblings}_siblings"), |b| {
            b.iter(|| decode_version_set(black_box(&stored)).expect("ok"))
        });
    }
    group.finish();
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    for (partitions, nodes) in [(64u32, 5usize), (1024, 64)] {
        let specs: Vec<NodeSpec> = (0..nodes)
            .map(|i| NodeSpec {
                id: NodeId::new(format!("n{i}")),
                weight: 1,
                zone: None,
            })
            .collect();
        let ring = Ring::new(partitions, &specs).expect("ring");
        let keys: Vec<Vec<u8>> = (0..1024)
            .map(|i| format!("user{i:012}").into_bytes())
            .collect();
        let mut i = 0;
        group.bench_function(
            format!("preference_list_q{partitions}_{nodes}_nodes"),
            |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    ring.preference_list_for_key(black_box(&keys[i]), 3)
                })
            },
        );
    }
    group.finish();
}

/// Four members on loopback, Q = 64.
fn four_members() -> Membership {
    let members = (1..=4u16)
        .map(|i| Member {
            id: NodeId::new(format!("n{i}")),
            addr: SocketAddr::from(([127, 0, 0, 1], 7400 + i)),
            weight: 1,
            zone: None,
        })
        .collect();
    Membership::new(1, 64, members).expect("membership")
}

/// What a coordinator asks for every request: the replicas of a key, on a membership that
/// never changed and on one whose last commit (n5 joined) has finished all its copies (the
/// ring it replaced is kept until the next commit), and through the view a coordinator reads.
fn replicas(c: &mut Criterion) {
    let mut group = c.benchmark_group("membership");
    let fresh = four_members();
    let mut settled = four_members();
    let me = NodeId::new("n1");
    let joiner = Member {
        id: NodeId::new("n5"),
        addr: SocketAddr::from(([127, 0, 0, 1], 7405)),
        weight: 1,
        zone: None,
    };
    settled.stage_join(&me, joiner).expect("join");
    let plan = settled.commit(&me, 3).expect("commit");
    for t in &plan.transfers {
        if let Some(from) = &t.from {
            settled.mark_transferred(from, t.partition, &t.to);
        }
    }
    assert!(settled.pending_transfers(3).is_empty(), "every copy done");
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("user{i:012}").into_bytes())
        .collect();
    for (name, membership) in [("never_changed", &fresh), ("after_a_join", &settled)] {
        let mut i = 0;
        group.bench_function(format!("replicas_for_key_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                membership.replicas_for_key(black_box(&keys[i]), 3)
            })
        });
    }
    // What the coordinator calls: the view remembers each partition's replicas until the
    // next membership is installed.
    let view = MembershipView::new(settled);
    let mut i = 0;
    group.bench_function("view_replicas_for_key_after_a_join", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            view.replicas_for_key(black_box(&keys[i]), 3)
        })
    });
    group.finish();
}

criterion_group!(benches, codec, vclock, ring, replicas);
criterion_main!(benches);
