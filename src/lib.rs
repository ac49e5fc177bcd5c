//! hermes-reconciler: keeps one s6 service slot per Hermes agent profile.
//!
//! Layout follows the control loop: [`observe`] reads the world into plain data ([`world`]),
//! [`plan`] is a pure function from that data to actions, [`apply`] is the only layer that
//! changes s6 or the filesystem (among it [`apply::runtime_record`], which records once per
//! container boot what kind of container this is; [`observe::runtime_record`] reads it back).
//! [`s6`] talks to s6 through its documented files; [`commands`] are the CLI's verbs. Below the
//! layers: [`layout`] (every on-disk name), [`model`], [`warning`] (typed findings),
//! [`capacity`] and [`fsops`] (atomic replace, rename-noreplace).

pub mod apply;
pub mod capacity;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod escape;
pub mod fsops;
pub mod hashing;
pub mod layout;
pub mod model;
pub mod observe;
pub mod plan;
pub mod s6;
pub mod shutdown;
pub mod warning;
pub mod world;
