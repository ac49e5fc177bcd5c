//! The CLI's verbs, on top of the library layers. Each returns the process exit status.

pub mod once;
pub mod run;
pub mod status;

use crate::apply::Applier;
use crate::apply::home::HomeWriter;
use crate::apply::slot::SlotWriter;
use crate::config::{self, Config, ConfigError};
use nix::unistd::{Uid, User};

/// Exit statuses of SPEC §4.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 64;
pub const EXIT_CONFIG: i32 = 78;

/// Builds the apply layer for this process: as root with `$HERMES_RUN_AS` set, files created
/// under the home belong to that user and slots give control to that user's group; otherwise
/// ownership is left as the kernel makes it (an unprivileged daemon works the same).
pub fn applier(config: &Config) -> Result<Applier, ConfigError> {
    let owner = match (&config.run_as, Uid::effective().is_root()) {
        (Some(name), true) => match User::from_name(name) {
            Ok(Some(u)) => Some((u.uid, u.gid)),
            Ok(None) => {
                return Err(ConfigError {
                    var: config::RUN_AS.var,
                    value: name.clone(),
                    why: "no such user on this system".into(),
                    source_kind: "configuration",
                });
            }
            Err(e) => {
                return Err(ConfigError {
                    var: config::RUN_AS.var,
                    value: name.clone(),
                    why: format!("cannot look the user up: {e}"),
                    source_kind: "configuration",
                });
            }
        },
        _ => None,
    };
    Ok(Applier {
        slots: SlotWriter { scandir: config.scandir.clone(), group: owner.map(|(_, g)| g) },
        home: HomeWriter::new(config.home.clone(), owner),
        wait_for_pickup: true,
        shutdown: crate::shutdown::Shutdown::default(),
    })
}
