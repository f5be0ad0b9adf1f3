//! Response compression: the resources' names, and the routes that refer to them.

use crate::config::Config;

use super::check::{Validator, display_name};

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let compressions = v.names("compression", config.compressions.iter().map(|c| c.name.as_str()));
    for (i, r) in config.routes.iter().enumerate() {
        if !r.compression.is_empty() && !compressions.contains(r.compression.as_str()) {
            v.err(
                "route",
                &display_name(&r.name, i),
                "compression",
                format!("unknown compression '{}'", r.compression),
            );
        }
    }
}
