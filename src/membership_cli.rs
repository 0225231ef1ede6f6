//! `shoal admin join|leave|remove|plan|commit|move`: the operator's plan-first membership
//! changes (riak's staged clustering). `join`, `leave` and `remove` stage a change through any
//! member and print the plan; `plan` shows what the staged changes would move; `commit` applies
//! them, which starts the ownership transfers (`admin ring` shows those still pending). `move`
//! records a member's new address, which takes effect without a commit.

use crate::client::Client;
use clap::Args;
use shoal_stages::membership::Member;
use shoal_stages::wire::{MembershipChange, PlanReply, PlanRequest};
use shoal_stages::NodeId;
use std::io::Write;
use std::net::SocketAddr;

/// `shoal admin join`
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The member to send the change through.
    #[command(flatten)]
    pub target: crate::cli::Target,
    /// The new node's id.
    #[arg(long)]
    pub id: String,
    /// Where the new node listens (what its peers and clients connect to).
    #[arg(long)]
    pub addr: SocketAddr,
    /// Its relative capacity.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Its failure zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shoal admin leave` and `shoal admin remove`
#[derive(Args, Debug)]
pub struct DepartArgs {
    /// The member to send the change through.
    #[command(flatten)]
    pub target: crate::cli::Target,
    /// The member's id.
    #[arg(long)]
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `shoal admin move`
#[derive(Args, Debug)]
pub struct MoveArgs {
    /// The member to send the change through.
    #[command(flatten)]
    pub target: crate::cli::Target,
    /// The member that moved.
    #[arg(long)]
    pub id: String,
    /// Where it listens now.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Records a member's new address and prints what the node asked now holds: a node that
/// moved to another host with its data keeps its id and partitions, where a remove and a
/// join would copy all of its data over again.
pub fn move_member(args: MoveArgs, out: &mut impl Write) -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeId::new(args.id);
    let request = PlanRequest {
        change: Some(MembershipChange::Move {
            node: node.clone(),
            addr: args.addr,
        }),
        commit: false,
    };
    let mut client = crate::cli::connect(&args.target)?;
    let reply = client.plan(request)?;
    if args.json {
        // The plan reply's fields, with what moved where (a trial's had neither).
        let mut json = serde_json::to_value(&reply)?;
        json["moved"] = node.to_string().into();
        json["addr"] = args.addr.to_string().into();
        writeln!(out, "{json}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{node} is at {} on {} (membership version {}): every node dials it there once gossip \
         brings them the change; no commit is needed and nothing moves",
        args.addr, reply.node, reply.version
    )?;
    if !reply.plan.is_empty() {
        writeln!(out, "other changes staged before:")?;
        print_plan(&reply, false, out)?;
    }
    Ok(())
}

/// Stages a join and prints the plan.
pub fn join(args: JoinArgs, out: &mut impl Write) -> Result<(), Box<dyn std::error::Error>> {
    let member = Member {
        id: NodeId::new(args.id),
        addr: args.addr,
        weight: args.weight,
        zone: args.zone,
    };
    let request = PlanRequest {
        change: Some(MembershipChange::Join(member)),
        commit: false,
    };
    let mut client = crate::cli::connect(&args.target)?;
    let reply = client.plan(request)?;
    print_plan(&reply, args.json, out)?;
    warn_if_under_n(&mut client, &reply, args.json, out)
}

/// After staging: a warning when the staged ring would have fewer nodes than N, so each key
/// would keep fewer copies than N (a trial staged a leave that left 2 nodes for N=3 and was
/// told nothing).
fn warn_if_under_n(
    client: &mut Client,
    reply: &PlanReply,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    if json || reply.plan.is_empty() {
        return Ok(());
    }
    // Best effort: the change is staged already, and a ring not read (a cut-off node refuses
    // it) only means no warning.
    let Ok((membership, n)) = client.ring_and_replicas() else {
        return Ok(());
    };
    let plan = &reply.plan;
    // The ring's nodes that stay, with those joining (a member whose weight or zone changes
    // is listed as joining too: counted once).
    let mut after: std::collections::BTreeSet<&NodeId> = membership
        .ring()
        .nodes()
        .map(|spec| &spec.id)
        .filter(|id| !plan.leaving.contains(id) && !plan.removed.contains(id))
        .collect();
    after.extend(plan.joining.iter());
    let after = after.len();
    if after < n {
        writeln!(
            out,
            "warning: the ring would have {after} node{} for N={n}: each key would keep {after} \
             cop{} until more nodes join (writes needing more than that fail)",
            if after == 1 { "" } else { "s" },
            if after == 1 { "y" } else { "ies" },
        )?;
    }
    Ok(())
}

/// Stages a leave (`remove: false`) or a remove and prints the plan.
pub fn depart(
    args: DepartArgs,
    remove: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let node = NodeId::new(args.id);
    let change = if remove {
        MembershipChange::Remove(node.clone())
    } else {
        MembershipChange::Leave(node.clone())
    };
    let request = PlanRequest {
        change: Some(change),
        commit: false,
    };
    let mut client = crate::cli::connect(&args.target)?;
    // Before a removal: whether the node had left (the plan, which lists ring changes only,
    // shows nothing for it). Asked only when it will be said.
    let had_left = remove
        && !args.json
        && client
            .ring_and_replicas()
            .map(|(membership, n)| membership.has_left(&node, n))?;
    let reply = client.plan(request)?;
    if had_left {
        writeln!(
            out,
            "{node} had left: marked removed now (the others forget it; its address is free); \
             a commit has nothing to move for it"
        )?;
    }
    print_plan(&reply, args.json, out)?;
    warn_if_under_n(&mut client, &reply, args.json, out)
}

/// Shows the plan (`commit: false`) or commits it; a commit is sent to the claimant (the
/// one node that commits), found from the ring of the node asked.
pub fn plan_or_commit(
    target: &crate::cli::Target,
    commit: bool,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = crate::cli::connect(target)?;
    if commit {
        let membership = client.ring()?;
        let claimant = membership
            .claimant()
            .and_then(|id| membership.addr_of(id))
            .ok_or("the ring has no claimant (every member was removed)")?;
        if claimant.to_string() != target.node {
            let timeout = std::time::Duration::from_secs(target.timeout_secs);
            client = Client::connect(&claimant.to_string(), timeout)?;
        }
    }
    let reply = client.plan(PlanRequest {
        change: None,
        commit,
    })?;
    print_plan(&reply, json, out)
}

/// Prints a plan reply as text or as JSON (the `PlanReply` fields).
pub fn print_plan(
    reply: &PlanReply,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    if json {
        writeln!(out, "{}", serde_json::to_string(reply)?)?;
        return Ok(());
    }
    let plan = &reply.plan;
    let names = |ids: &[NodeId]| {
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.iter()
                .map(NodeId::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let heading = if reply.committed {
        "committed"
    } else if plan.is_empty() {
        "nothing staged"
    } else {
        "staged (run `shoal admin commit` to apply)"
    };
    writeln!(
        out,
        "{heading} on {} (membership version {})",
        reply.node, reply.version
    )?;
    writeln!(out, "  joining: {}", names(&plan.joining))?;
    writeln!(out, "  leaving: {}", names(&plan.leaving))?;
    writeln!(out, "  removed: {}", names(&plan.removed))?;
    if !plan.is_empty() {
        writeln!(
            out,
            "  partitions changing owner: {}; partition copies to make: {}",
            plan.owners_changed,
            plan.transfers.len()
        )?;
        let mut moves: std::collections::BTreeMap<(String, String), u32> = Default::default();
        for t in &plan.transfers {
            let from = t
                .from
                .as_ref()
                .map_or("(nobody)".to_string(), NodeId::to_string);
            *moves.entry((from, t.to.to_string())).or_default() += 1;
        }
        for ((from, to), count) in moves {
            writeln!(out, "    {from} -> {to}: {count} partitions")?;
        }
        if !reply.committed && !reply.pending.is_empty() {
            // Planned against the ring the last commit is moving to, whose new replicas may
            // not hold their copies yet: once those transfers are done the plan is made again,
            // and its sources can differ (a trial saw "n4 -> n5: 64", then 44 spread out).
            writeln!(
                out,
                "  (provisional: the last commit's transfers are still pending; a commit is \
                 refused until they are done, unless those left all go to removed nodes, and \
                 the copies' sources may change by then)"
            )?;
        }
    }
    writeln!(
        out,
        "transfers of the last commit still pending: {}",
        reply.pending.len()
    )?;
    // Each old replica drops what it handed away on its own, cleanup_delay_ms after: a change
    // is finished when no transfer is pending and every node shows 0 here.
    writeln!(
        out,
        "partitions {} no longer holds and has not dropped yet: {}",
        reply.node, reply.drops_waiting
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_stages::membership::{Plan, Transfer};

    fn reply(committed: bool, pending: usize) -> PlanReply {
        let transfer = |partition| Transfer {
            partition,
            from: Some(NodeId::new("n4")),
            to: NodeId::new("n5"),
        };
        PlanReply {
            node: NodeId::new("n1"),
            version: 7,
            committed,
            plan: Plan {
                joining: vec![NodeId::new("n5")],
                leaving: Vec::new(),
                removed: Vec::new(),
                owners_changed: 2,
                transfers: vec![transfer(0), transfer(1)],
            },
            pending: (0..pending as u32).map(transfer).collect(),
            progress: Vec::new(),
            drops_waiting: 0,
        }
    }

    fn printed(reply: &PlanReply) -> String {
        let mut out = Vec::new();
        print_plan(reply, false, &mut out).expect("printed");
        String::from_utf8(out).expect("text")
    }

    /// Goal: a plan staged while the last commit's transfers are pending says it is
    /// provisional (its copies' sources are the new replicas that may not hold them yet); one
    /// staged with nothing pending, or just committed, does not.
    #[test]
    fn a_plan_staged_while_transfers_are_pending_says_it_is_provisional() {
        assert!(printed(&reply(false, 3)).contains("provisional"));
        assert!(!printed(&reply(false, 0)).contains("provisional"));
        assert!(!printed(&reply(true, 3)).contains("provisional"));
    }
}
