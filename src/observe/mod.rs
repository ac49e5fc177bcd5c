//! Observe: read the world (volume, scandir, s6 status) into plain data. Never writes.

pub mod container;
pub mod safe_read;
pub mod volume;
