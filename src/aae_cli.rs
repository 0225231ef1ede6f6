//! `shoal admin aae --node ADDR [--json]`: anti-entropy on one node. Per partition it
//! replicates, its Merkle tree (state, root digest, keys) and, per other replica, when the last
//! exchange completed, since when the two were last found in sync, and the objects sent and
//! received; then the node's totals.

use crate::client::Client;
use shoal_stages::event::wall_clock_ms;
use std::io::Write;

/// Prints the node's anti-entropy report, as a table or as JSON (the `AaeReport` fields).
pub fn run(
    client: &mut Client,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let report = client.aae()?;
    if json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
        return Ok(());
    }
    let now = wall_clock_ms();
    let ago = |ms: u64| {
        if ms == 0 {
            "never".to_string()
        } else {
            format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0)
        }
    };
    writeln!(
        out,
        "anti-entropy on {} ({})",
        report.node,
        if report.enabled {
            "enabled"
        } else {
            "disabled: trees kept, no exchanges"
        }
    )?;
    writeln!(
        out,
        "{:>9} {:<9} {:<18} {:>9}  {:<6} {:>14} {:>14} {:>9} {:>9}",
        "Partition",
        "Tree",
        "Root",
        "Keys",
        "Peer",
        "Last exchange",
        "In sync since",
        "Sent",
        "Received"
    )?;
    for partition in &report.partitions {
        for (i, peer) in partition.peers.iter().enumerate() {
            let (id, tree, root, keys) = if i == 0 {
                (
                    partition.partition.to_string(),
                    partition.tree.clone(),
                    format!("{:016x}", partition.root),
                    partition.keys.to_string(),
                )
            } else {
                Default::default()
            };
            writeln!(
                out,
                "{:>9} {:<9} {:<18} {:>9}  {:<6} {:>14} {:>14} {:>9} {:>9}",
                id,
                tree,
                root,
                keys,
                peer.peer.as_str(),
                ago(peer.last_exchange_ms),
                ago(peer.in_sync_since_ms),
                peer.keys_sent,
                peer.keys_received
            )?;
        }
    }
    writeln!(
        out,
        "exchanges {} ({} found in sync at the root), objects sent {}, received {}, key digests \
         compared {}, bytes exchanged {}, tree rebuilds {} ({} found rot), tombstones purged {}",
        report.exchanges,
        report.in_sync_exchanges,
        report.keys_sent,
        report.keys_received,
        report.digests_compared,
        report.bytes_exchanged,
        report.rebuilds,
        report.rot_found,
        report.tombstones_purged
    )?;
    Ok(())
}
