//! A node every peer refuses (`machine/cut_off.rs`), with the handshake tests' machines.

use super::*;

/// Goal: a node every other member refuses (here: its secret is not theirs) turns a client's
/// get away `CutOff` without passing it on, only once the last of them refused (two at
/// least), and serves again once one accepts its handshake.
#[test]
fn a_node_every_peer_refuses_turns_clients_away_until_one_accepts_it() {
    let now = Now::real();
    let three = || {
        let members = (1..=3)
            .map(|i| Member::loopback(&format!("n{i}"), i))
            .collect();
        MembershipView::new(Membership::new(1, 8, members).expect("membership"))
    };
    let odd_secret: &[u8] = b"another-cluster-secret";
    let mut node = machine_in("n1", odd_secret, 1, three());
    let mut out = Outbox::new();
    // At `at`, n1 dials `peer` (a machine with `secret`), which answers its hello.
    let dial = |node: &mut IntakeMachine, peer: &str, secret: &[u8], at: Now, out: &mut Outbox| {
        let mut receiver = machine_in(peer, secret, 9, three());
        let to_peer = IntakeEvent::ToPeer {
            peer: NodeId::new(peer),
            frame: ping(),
        };
        node.on_event(at, to_peer, out);
        let w = written(out);
        assert_eq!(w.dialled.len(), 1, "dialled {peer}");
        let incoming = receiver.accept().expect("accepted");
        receiver.on_received(at, incoming, &w.frames[0].1, out);
        let challenge = written(out).frames.remove(0).1;
        node.on_received(at, w.dialled[0], &challenge, out);
        written(out);
    };
    let client = node.accept().expect("a client");
    let get = Message::Get(crate::wire::GetRequest {
        key: crate::wire::Bytes::from(b"k".to_vec()),
        r: None,
        timeout_ms: None,
    });
    let frame = get.encode(5).expect("encode");
    // Whether the get was turned away CutOff (else it was passed on).
    let turned_away = |node: &mut IntakeMachine, out: &mut Outbox| {
        node.on_received(now, client, &frame, out);
        let w = written(out);
        let cut_off = w.frames.iter().any(|(_, f)| {
            let mut decoder = FrameDecoder::new(1 << 20);
            decoder.extend(f);
            matches!(
                decoder.next_frame().map(|f| f.map(|f| Message::decode(&f))),
                Ok(Some(Ok(Message::Error(
                    crate::error::ServiceError::CutOff { .. }
                ))))
            )
        });
        assert_eq!(cut_off, w.parsed == 0, "turned away or passed on: {w:?}");
        cut_off
    };
    dial(&mut node, "n2", SECRET, now, &mut out);
    assert!(!turned_away(&mut node, &mut out), "one peer of two refused");
    dial(&mut node, "n3", SECRET, now, &mut out);
    assert!(turned_away(&mut node, &mut out), "every peer refused");
    node.on_tick(now, &mut out);
    assert!(turned_away(&mut node, &mut out), "still, after a tick");
    // After the refused link's backoff, a dial to n3 whose secret is this node's.
    let later = Now {
        instant: now.instant + Duration::from_secs(1),
        wall_ms: now.wall_ms + 1000,
    };
    dial(&mut node, "n3", odd_secret, later, &mut out);
    assert!(!turned_away(&mut node, &mut out), "n3 accepted it");
}
