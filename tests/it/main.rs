//! The integration tests: one test binary (`cargo test --test it`), one module per area, all on
//! the shared kit in `tests/kit` (see its top comment, which also says how to add a suite).
//!
//! One binary instead of one per file: the kit and the dependencies are compiled and linked
//! once. Suites are selected by libtest filters on the module path, e.g.
//! `cargo test --test it -- once_ run_ scanner --skip packaging::` (what `scripts/test.sh` runs
//! against s6 2.13 and 2.15) or `cargo test --test it -- run_drift::`.
//!
//! Every test here needs root (it starts s6-svscan in a pid namespace, chroots, creates
//! root-owned slots) and begins with `root_only!()`: as a user other than root, a plain
//! `cargo test` runs the unit tests and these return at once, after one line saying they were
//! not run; `scripts/test.sh` sets `HERMES_TEST_REQUIRE_ROOT=1`, which turns that into a failure.

#[path = "../kit/mod.rs"]
mod kit;

mod hostile_event;
mod hostile_lock;
mod hostile_opens;
mod once_bad_input;
mod once_cli;
mod once_container;
mod once_fleet;
mod once_harness;
mod once_hostile_home;
mod once_intent;
mod once_lifecycle;
mod once_rights;
mod once_topology;
mod packaging;
mod run_crashloop;
mod run_drift;
mod run_hostile_names;
mod run_intent;
mod run_profiles;
mod run_restart;
mod run_status;
mod run_volume;
mod run_watch_backends;
mod s6_direct;
mod scanner;
mod status_pipe;
