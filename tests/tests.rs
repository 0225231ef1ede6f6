//! shoal's cluster tests: real nodes on 127.0.0.1 (real TCP, real fjall in temp dirs), one
//! test binary with a module per topic so CI links once (STYLE.md habit 15).

mod cluster {
    pub mod anti_entropy;
    pub mod bad_input;
    pub mod cli;
    pub mod cluster_client;
    pub mod durability;
    pub mod failures;
    pub mod handshake;
    pub mod load_tool;
    pub mod membership;
    pub mod metrics;
    pub mod overload;
    pub mod redis_door;
    pub mod replication;
    pub mod reply_writer;
    pub mod security;
    pub mod shutdown;
    pub mod support;
    pub mod throttle;
    pub mod versioning;
}
