//! ws-ckpt engine: a declarative reconciler that turns a TOML config into btrfs-backed
//! workspaces with instant checkpoints and rollbacks.
//!
//! Layers: [`config`] (desired state) and [`state`] (persisted state) are pure data;
//! [`observe`] reads the live system through [`sys::Sys`] in two phases around [`resolve`]
//! (which backend is effective, decided once per pass); [`plan`] is a pure function of the
//! four; [`execute`] carries out the plan. [`engine`] ties them together for the CLI and the
//! daemon; every request takes one path, [`handler`] (resolve → authorize → execute → audit),
//! reached through [`client`] (the daemon's socket, or in-process).
//!
//! There are exactly two mutators, and both go through [`sys::Sys`] and the persisted-state
//! [`store`]: [`execute`], for everything the planner decides, and [`ops`], the snapshot
//! operations agents call around risky steps (checkpoint, rollback, delete, cleanup, diff),
//! which are requests, not plans, and must not wait for a full pass. `ops` records every
//! multi-step operation in the same pending-operation journal, and the planner and executor
//! finish or revert what a crash interrupted; `ops` decides nothing the planner owns.
#![deny(missing_docs)]

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod client;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod engine;
pub mod error;
pub mod execute;
pub mod fault;
pub mod finding;
pub mod handler;
pub mod host_cache;
pub mod ids;
pub mod ipc;
pub mod lock;
pub mod locks;
pub mod model;
pub mod observe;
pub mod ops;
pub mod paths;
pub mod plan;
pub mod policy;
pub mod procs;
pub mod resolve;
pub mod settle;
pub mod state;
pub mod status;
pub mod store;
pub mod sys;
pub mod time;
pub mod tree;

#[cfg(test)]
mod fuzz_tests;
