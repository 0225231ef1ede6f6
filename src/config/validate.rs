//! Validation of a parsed config: every value within its range, and the relations between
//! keys (quorums within N, a frame that holds a maximal key and value, one thread for the
//! single-threaded stages). Every error names its key.

use super::*;

impl Config {
    /// Checks every value and every relation between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !NodeId::new(self.node.id.clone()).is_valid() {
            return Err(invalid(
                "node.id",
                "must be 1..=64 printable ASCII characters without spaces",
            ));
        }
        if self.node.drain_timeout_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "node.drain_timeout_ms",
                format!("must be in 0..={MAX_INTERVAL_MS}"),
            ));
        }
        if self.node.weight == 0 {
            return Err(invalid("node.weight", "must be at least 1"));
        }
        let c = &self.cluster;
        if !c.partitions.is_power_of_two() || c.partitions > 65536 {
            return Err(invalid(
                "cluster.partitions",
                format!("{} is not a power of two in 1..=65536", c.partitions),
            ));
        }
        if c.n == 0 || c.n > 16 {
            return Err(invalid("cluster.n", format!("{} is outside 1..=16", c.n)));
        }
        for (key, value) in [("cluster.r", c.r), ("cluster.w", c.w)] {
            if value == 0 || value > c.n {
                return Err(invalid(key, format!("{value} is outside 1..=n ({})", c.n)));
            }
        }
        if c.request_timeout_ms == 0 || c.request_timeout_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "cluster.request_timeout_ms",
                format!("must be in 1..={MAX_INTERVAL_MS}"),
            ));
        }
        if c.replica_timeout_ms == 0 || c.replica_timeout_ms > c.request_timeout_ms {
            return Err(invalid(
                "cluster.replica_timeout_ms",
                "must be in 1..=request_timeout_ms",
            ));
        }
        if c.probe_interval_ms == 0 || c.probe_interval_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "cluster.probe_interval_ms",
                format!("must be in 1..={MAX_INTERVAL_MS}"),
            ));
        }
        if c.secret.len() < 16 {
            return Err(invalid("cluster.secret", "must be at least 16 bytes"));
        }
        if c.vclock_max_entries == 0 {
            return Err(invalid("cluster.vclock_max_entries", "must be at least 1"));
        }
        self.validate_limits()?;
        if self.storage.sync_interval_ms == 0 || self.storage.sync_interval_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "storage.sync_interval_ms",
                format!("must be in 1..={MAX_INTERVAL_MS}"),
            ));
        }
        if self.storage.object_cache_mib > MAX_OBJECT_CACHE_MIB {
            return Err(invalid(
                "storage.object_cache_mib",
                format!("must be at most {MAX_OBJECT_CACHE_MIB} (0: no cache)"),
            ));
        }
        self.validate_stages()?;
        self.validate_controller()?;
        self.validate_anti_entropy()?;
        self.ring_members()?;
        if self.node.await_join && self.seeds().is_empty() {
            return Err(invalid(
                "node.await_join",
                "a node that awaits a join needs cluster.members to gossip with (its seeds)",
            ));
        }
        if !(10..=60_000).contains(&self.gossip.interval_ms) {
            return Err(invalid("gossip.interval_ms", "must be in 10..=60000"));
        }
        self.validate_transfer()?;
        if !["debug", "info", "warning", "error"].contains(&self.log.level.as_str()) {
            return Err(invalid(
                "log.level",
                format!("{:?} is not debug, info, warning or error", self.log.level),
            ));
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            return Err(invalid(
                "log.format",
                format!("{:?} is not text or json", self.log.format),
            ));
        }
        Ok(())
    }

    fn validate_transfer(&self) -> Result<(), ConfigError> {
        let t = &self.transfer;
        if !(1..=shoal_stages::wire::MAX_AAE_ITEMS).contains(&t.batch_keys) {
            return Err(invalid(
                "transfer.batch_keys",
                format!("must be in 1..={}", shoal_stages::wire::MAX_AAE_ITEMS),
            ));
        }
        if t.batch_bytes == 0 || t.batch_bytes > 64 << 20 {
            return Err(invalid("transfer.batch_bytes", "must be in 1..=67108864"));
        }
        if t.settle_ms > 600_000 {
            return Err(invalid("transfer.settle_ms", "must be at most 600000"));
        }
        if t.cleanup_delay_ms > 7 * 24 * 3600 * 1000 {
            return Err(invalid(
                "transfer.cleanup_delay_ms",
                "must be at most a week",
            ));
        }
        if !(100..=600_000).contains(&t.ack_timeout_ms) {
            return Err(invalid(
                "transfer.ack_timeout_ms",
                "must be in 100..=600000",
            ));
        }
        Ok(())
    }

    fn validate_anti_entropy(&self) -> Result<(), ConfigError> {
        let a = &self.anti_entropy;
        let week_ms = 7 * 24 * 3600 * 1000;
        if !(10..=week_ms).contains(&a.exchange_interval_ms) {
            return Err(invalid(
                "anti_entropy.exchange_interval_ms",
                format!("must be in 10..={week_ms}"),
            ));
        }
        if !(100..=365 * 24 * 3600 * 1000).contains(&a.rebuild_interval_ms) {
            return Err(invalid(
                "anti_entropy.rebuild_interval_ms",
                "must be from 100 ms to a year",
            ));
        }
        if a.confirm_delay_ms > 60_000 {
            return Err(invalid(
                "anti_entropy.confirm_delay_ms",
                "must be at most 60000",
            ));
        }
        if !(1..=shoal_stages::wire::MAX_AAE_ITEMS).contains(&a.max_keys_per_exchange) {
            return Err(invalid(
                "anti_entropy.max_keys_per_exchange",
                format!("must be in 1..={}", shoal_stages::wire::MAX_AAE_ITEMS),
            ));
        }
        if a.tombstone_grace_ms == 0 {
            return Err(invalid(
                "anti_entropy.tombstone_grace_ms",
                "must be at least 1 (0 would purge a delete before a late replica hears of it)",
            ));
        }
        Ok(())
    }

    pub(super) fn validate_controller(&self) -> Result<(), ConfigError> {
        let c = &self.controller;
        if !(c.target_percentile > 0.0 && c.target_percentile <= 100.0) {
            return Err(invalid(
                "controller.target_percentile",
                "must be in (0, 100], e.g. 99.9",
            ));
        }
        if c.target_ms == 0 || c.target_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "controller.target_ms",
                format!("must be in 1..={MAX_INTERVAL_MS}"),
            ));
        }
        if c.period_ms < 10 || c.period_ms > 60_000 {
            return Err(invalid("controller.period_ms", "must be in 10..=60000"));
        }
        if c.window_periods == 0 || c.window_periods > 1000 {
            return Err(invalid("controller.window_periods", "must be in 1..=1000"));
        }
        if !(c.decrease_factor > 0.0 && c.decrease_factor < 1.0) {
            return Err(invalid(
                "controller.decrease_factor",
                "must be in (0, 1), e.g. 0.5",
            ));
        }
        if c.max_rate == 0 {
            return Err(invalid(
                "controller.max_rate",
                "must be at least 1 (and at least min_rate)",
            ));
        }
        if c.min_rate == 0 || c.min_rate > c.max_rate {
            return Err(invalid(
                "controller.min_rate",
                "must be at least 1 and at most max_rate: a backlog must always drain",
            ));
        }
        if c.max_rate > MAX_RATE_PER_SEC {
            return Err(invalid(
                "controller.max_rate",
                format!("must be at most {MAX_RATE_PER_SEC}"),
            ));
        }
        if !(0..=19).contains(&c.storage_nice) {
            return Err(invalid(
                "controller.storage_nice",
                "must be in 0..=19 (steps of nice below the node's own; 0: none)",
            ));
        }
        if !(0..=19).contains(&c.background_nice) {
            return Err(invalid(
                "controller.background_nice",
                "must be in 0..=19 (steps of nice below the node's own; 0: none)",
            ));
        }
        if c.increase_per_period == 0 || c.increase_per_period > c.max_rate {
            return Err(invalid(
                "controller.increase_per_period",
                "must be in 1..=max_rate",
            ));
        }
        if !(1.0..=2.0).contains(&c.headroom_factor) {
            return Err(invalid(
                "controller.headroom_factor",
                "must be in 1..=2 (1: additive increase only)",
            ));
        }
        for (stage, share) in &c.shares {
            let key = format!("controller.shares.{stage}");
            if !stage.paced() {
                return Err(invalid(
                    &key,
                    "only background stages with a gate have a share",
                ));
            }
            if *share == 0 || *share > 1000 {
                return Err(invalid(&key, "must be in 1..=1000"));
            }
        }
        Ok(())
    }

    pub(super) fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > MAX_STORABLE_KEY_BYTES {
            return Err(invalid(
                "limits.max_key_bytes",
                format!(
                    "{} is outside 1..={MAX_STORABLE_KEY_BYTES}",
                    l.max_key_bytes
                ),
            ));
        }
        let needed = l.max_key_bytes + l.max_value_bytes + FRAME_OVERHEAD_BYTES + FRAME_SLACK_BYTES;
        if l.max_frame_bytes < needed || l.max_frame_bytes > u32::MAX as usize {
            return Err(invalid("limits.max_frame_bytes", format!(
                "{} must be at least max_key_bytes + max_value_bytes + {} ({needed}) and at most {}",
                l.max_frame_bytes, FRAME_OVERHEAD_BYTES + FRAME_SLACK_BYTES, u32::MAX)));
        }
        if l.max_value_bytes > MAX_VALUE_LIMIT_BYTES {
            return Err(invalid(
                "limits.max_value_bytes",
                format!("must be at most {MAX_VALUE_LIMIT_BYTES}"),
            ));
        }
        if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(invalid(
                "limits.max_connections",
                format!("must be in 1..={MAX_CONNECTIONS_LIMIT}"),
            ));
        }
        if let Some(token) = &self.security.client_token {
            if token.len() < 16 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(
                    "security.client_token",
                    "must be 16..=256 printable ASCII characters without spaces",
                ));
            }
        }
        // One thread per Redis connection: a bound a machine's thread limit can take.
        if self.redis.max_connections == 0 || self.redis.max_connections > 4096 {
            return Err(invalid("redis.max_connections", "must be in 1..=4096"));
        }
        if l.frame_timeout_ms == 0 || l.frame_timeout_ms > MAX_INTERVAL_MS {
            return Err(invalid(
                "limits.frame_timeout_ms",
                format!("must be in 1..={MAX_INTERVAL_MS}"),
            ));
        }
        if l.max_siblings == 0 || l.max_siblings > MAX_SIBLINGS_LIMIT {
            return Err(invalid(
                "limits.max_siblings",
                format!("must be in 1..={MAX_SIBLINGS_LIMIT}"),
            ));
        }
        if l.max_write_buffer_bytes < l.max_frame_bytes {
            return Err(invalid(
                "limits.max_write_buffer_bytes",
                "must hold at least one maximal frame",
            ));
        }
        // Each of a key's N coordinators keeps its own versions of the key within a frame
        // (ObjectTooLarge), but concurrent blind puts through different coordinators merge
        // on the replicas into up to N frames' worth, which every node must still carry
        // between nodes and answer (else the key is unreadable and its transfers park).
        let merged = self.cluster.n.saturating_mul(l.max_frame_bytes);
        if l.max_peer_frame_bytes() < merged {
            return Err(invalid(
                "limits.max_write_buffer_bytes",
                format!(
                    "{} is too small for n = {} and max_frame_bytes = {}: a key's versions merged \
                     from its n coordinators can take n x max_frame_bytes ({merged} bytes), and \
                     half the write buffer must carry them; set it to at least {}",
                    l.max_write_buffer_bytes,
                    self.cluster.n,
                    l.max_frame_bytes,
                    merged.saturating_mul(2)
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn validate_stages(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.pool.background_workers) {
            return Err(invalid(
                "pool.background_workers",
                "must be in 1..=64 (background stages run only on these threads)",
            ));
        }
        if self.pool.workers > 256 {
            return Err(invalid(
                "pool.workers",
                "must be in 0..=256 (0: one per core plus one)",
            ));
        }
        if self.pool.spin_us.is_some_and(|s| s > 100_000) {
            return Err(invalid("pool.spin_us", "must be at most 100000"));
        }
        if let Some(stage) = self
            .intake_runs()
            .into_iter()
            .find(|s| *s == StageId::Intake || s.class() == StageClass::Background)
        {
            return Err(invalid(
                "pool.intake_runs",
                format!("{stage} cannot run in the intake's loop: only foreground pool stages can"),
            ));
        }
        if self.intake_runs().contains(&StageId::Commit) {
            return Err(invalid(
                "pool.intake_runs",
                "commit cannot run in the intake's loop: it waits for each fdatasync, and the \
                 loop would stop reading every socket meanwhile",
            ));
        }
        for (stage, tuning) in &self.stages {
            let key = |field: &str| format!("stages.{stage}.{field}");
            if tuning.threads == Some(0) || tuning.threads.is_some_and(|t| t > 256) {
                return Err(invalid(&key("threads"), "must be in 1..=256"));
            }
            if tuning
                .queue_capacity
                .is_some_and(|c| c == 0 || c > MAX_QUEUE_CAPACITY)
            {
                return Err(invalid(
                    &key("queue_capacity"),
                    format!("must be in 1..={MAX_QUEUE_CAPACITY}"),
                ));
            }
            if tuning.batch_max.is_some_and(|b| b == 0 || b > MAX_BATCH) {
                return Err(invalid(
                    &key("batch_max"),
                    format!("must be in 1..={MAX_BATCH}"),
                ));
            }
            if tuning.spin_us.is_some_and(|s| s > 100_000) {
                return Err(invalid(&key("spin_us"), "must be at most 100000"));
            }
            if !stage.paced() && tuning.rate_per_sec.is_some() {
                return Err(invalid(
                    &key("rate_per_sec"),
                    "only background stages with a gate take a rate (storage's background \
                     lane is paced by the stages that ask it)",
                ));
            }
            if tuning.rate_per_sec.is_some_and(|r| r > MAX_RATE_PER_SEC) {
                return Err(invalid(
                    &key("rate_per_sec"),
                    format!("must be at most {MAX_RATE_PER_SEC}"),
                ));
            }
            if *stage == StageId::Intake {
                if tuning.threads.is_some()
                    || tuning.batch_max.is_some()
                    || tuning.spin_us.is_some()
                {
                    return Err(invalid("stages.intake", "takes only queue_capacity: one mio event loop owns every socket and drains its queue every turn"));
                }
            } else if stage.row().single_threaded && tuning.threads.is_some_and(|t| t != 1) {
                return Err(invalid(
                    &key("threads"),
                    "must be 1: the stage's machine keeps a table (pending requests, outstanding operations or deliveries) in one thread",
                ));
            }
        }
        Ok(())
    }
}
