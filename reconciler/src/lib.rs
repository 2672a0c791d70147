//! ws-ckpt engine: a declarative reconciler that turns a TOML config into btrfs-backed
//! workspaces with instant checkpoints and rollbacks.
//!
//! Layers: [`config`] (desired state) and [`state`] (persisted state) are pure data;
//! [`observe`] reads the live system through [`sys::Sys`]; [`plan`] is a pure function of the
//! three; [`execute`] is the only code that changes the system. [`engine`] ties them together
//! for the CLI and the daemon.
#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod diff;
pub mod engine;
pub mod error;
pub mod execute;
pub mod fault;
pub mod finding;
pub mod handler;
pub mod ids;
pub mod ipc;
pub mod lock;
pub mod model;
pub mod observe;
pub mod ops;
pub mod paths;
pub mod plan;
pub mod resolve;
pub mod state;
pub mod status;
pub mod store;
pub mod sys;
pub mod time;
pub mod tree;

#[cfg(test)]
mod fuzz_tests;
