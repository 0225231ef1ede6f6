//! `shoal admin ring` and `shoal admin members`: the committed ring (each member's state and
//! partitions, the transfers pending and their progress) and the members as this node's
//! failure detector sees them: up or down (for how long), and the hints held for each.

use crate::cli::{connect, RingArgs};
use crate::client::Client;
use shoal_stages::membership::MemberState;

/// `shoal admin ring`: each member's state, partitions and share, and the pending transfers
/// with the progress their senders report.
pub fn run_ring(args: RingArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.target)?;
    let (membership, n) = client.ring_and_replicas()?;
    // The pending transfers depend on N, which the node knows and the client does not.
    let plan = client.plan(shoal_stages::wire::PlanRequest {
        change: None,
        commit: false,
    })?;
    let ring = membership.ring();
    let q = ring.partition_count();
    // What each node stores, beside what it owns: the owners' share alone hid a trial's
    // uneven replicas (`Ring::replicas_held`).
    let copies = ring.replicas_held(n);
    let nodes: Vec<serde_json::Value> = membership
        .entries()
        .map(|e| {
            let m = &e.member;
            let owned = ring.partitions_of(&m.id).len();
            let sending = plan
                .pending
                .iter()
                .filter(|t| t.from.as_ref() == Some(&m.id))
                .count();
            // A leaver has left only once it holds nothing any coordinator still uses (the
            // same rule as `admin members`).
            let state = match (e.state, ring.contains(&m.id)) {
                (MemberState::Active, true) => "valid",
                (MemberState::Active, false) => "joining",
                (MemberState::Leaving, _) if membership.has_left(&m.id, n) => "left",
                (MemberState::Leaving, _) => "leaving",
                (MemberState::Removed, _) => "removed",
            };
            serde_json::json!({
                "id": m.id.to_string(), "addr": m.addr.to_string(), "weight": m.weight,
                "zone": m.zone, "state": state, "partitions": owned,
                "share": owned as f64 / f64::from(q),
                "replicas": copies.get(&m.id).copied().unwrap_or(0),
                "sending": sending,
                "receiving": plan.pending.iter().filter(|t| t.to == m.id).count(),
            })
        })
        .collect();
    // Each sender reports its own transfers' progress: ask every member (one that does not
    // answer is skipped; its transfers show as pending without progress).
    let timeout = std::time::Duration::from_secs(args.target.timeout_secs);
    let progress: Vec<(String, shoal_stages::wire::TransferProgress)> = membership
        .members()
        .filter_map(|m| {
            let mut client = Client::connect(&m.addr.to_string(), timeout).ok()?;
            let reply = client
                .plan(shoal_stages::wire::PlanRequest {
                    change: None,
                    commit: false,
                })
                .ok()?;
            Some((m.id.to_string(), reply.progress))
        })
        .flat_map(|(from, progress)| progress.into_iter().map(move |p| (from.clone(), p)))
        .filter(|(from, p)| {
            plan.pending.iter().any(|t| {
                t.partition == p.partition
                    && t.to == p.to
                    && t.from.as_ref().is_some_and(|f| f.as_str() == from)
            })
        })
        .collect();
    if args.json {
        let owners: Vec<String> = ring.owners().iter().map(|o| o.to_string()).collect();
        let in_flight: Vec<serde_json::Value> = progress
            .iter()
            .map(|(from, p)| {
                serde_json::json!({
                    "partition": p.partition, "from": from, "to": p.to.to_string(),
                    "phase": p.phase, "objects": p.objects, "bytes": p.bytes, "retries": p.retries,
                    "last_error": p.last_error,
                })
            })
            .collect();
        let out = serde_json::json!({
            "version": membership.version, "partitions": q, "nodes": nodes, "owners": owners,
            "pending_transfers": plan.pending, "in_flight": in_flight,
        });
        println!("{out}");
        return Ok(());
    }
    println!("membership version {}, {q} partitions", membership.version);
    println!(
        "{:<12} {:<22} {:<8} {:>6} {:<8} {:>10} {:>7} {:>8} {:>8} {:>9}",
        "Node",
        "Address",
        "State",
        "Weight",
        "Zone",
        "Partitions",
        "Share",
        "Replicas",
        "Sending",
        "Receiving"
    );
    for n in &nodes {
        // serde_json values ignore width flags: numbers are printed through strings.
        let text = |field: &str| n[field].to_string();
        println!(
            "{:<12} {:<22} {:<8} {:>6} {:<8} {:>10} {:>6.1}% {:>8} {:>8} {:>9}",
            n["id"].as_str().unwrap_or(""),
            n["addr"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or(""),
            text("weight"),
            n["zone"].as_str().unwrap_or("-"),
            text("partitions"),
            n["share"].as_f64().unwrap_or(0.0) * 100.0,
            text("replicas"),
            text("sending"),
            text("receiving"),
        );
    }
    println!(
        "pending transfers: {} (partition copies the last commit needs)",
        plan.pending.len()
    );
    for (from, p) in &progress {
        println!(
            "  partition {:>5} {from} -> {}: {}, {} objects, {:.1} MiB, {} retries",
            p.partition,
            p.to,
            p.phase,
            p.objects,
            p.bytes as f64 / 1_048_576.0,
            p.retries
        );
        if !p.last_error.is_empty() {
            println!("    last failure: {}", p.last_error);
        }
    }
    if !plan.plan.is_empty() {
        println!("staged changes not committed: see `shoal admin plan`");
    }
    Ok(())
}

/// `shoal admin members`: every member, up or down (for how long), and the hints held for it.
pub fn run_members(args: RingArgs) -> Result<(), Box<dyn std::error::Error>> {
    let reply = connect(&args.target)?.members()?;
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
        return Ok(());
    }
    println!(
        "members as seen by {} (membership version {})",
        reply.node, reply.version
    );
    println!(
        "{:<12} {:<22} {:<6} {:>12} {:>13}  Why down",
        "Node", "Address", "State", "Down for", "Hints held"
    );
    for m in &reply.members {
        // A member that has left gets no requests, so this node's detector knows nothing of
        // it: "up" would be a guess.
        let state = match (m.left, m.up) {
            (true, _) => "left",
            (false, true) => "up",
            (false, false) => "down",
        };
        let (down, why) = if m.up || m.left {
            ("-".to_string(), "")
        } else {
            (
                format!("{:.1} s", m.down_for_ms as f64 / 1000.0),
                m.why.as_str(),
            )
        };
        println!(
            "{:<12} {:<22} {:<6} {:>12} {:>13}  {}",
            m.node, m.addr, state, down, m.hints_pending, why
        );
    }
    Ok(())
}
