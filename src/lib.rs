//! shoal: a Dynamo-style replicated key-value store (DeCandia et al., SOSP 2007) built as a
//! SEDA pipeline of plain threads (Welsh et al., SOSP 2001). No async runtime.
//!
//! This crate is the node: its [`config`], the wiring of stages into a [`node`], the [`client`]
//! library, and the command line ([`cli`]). The stages and the paper's algorithms live in the
//! `shoal-stages` crate (`stages/`). ARCHITECTURE.md has the map.
#![warn(missing_docs)]

pub mod aae_cli;
pub mod cli;
pub mod client;
pub mod cluster_client;
pub mod config;
pub mod controller;
pub mod demo;
pub mod load;
pub mod logging;
pub mod membership_cli;
pub mod metrics;
pub mod node;
pub mod redis_door;
pub mod ring_cli;
pub mod sim_cli;
pub mod stats_cli;
pub mod throttle_cli;

pub use shoal_stages as stages;
