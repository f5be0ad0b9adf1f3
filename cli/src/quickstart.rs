//! The config `vane dev` applies to an empty store: `examples/quickstart.yaml` read from
//! the current directory at start when it is there, the copy built into the binary
//! otherwise (an installed `vane dev` works anywhere).
//!
//! The built-in copy is `cli/src/quickstart.yaml`, not an `include_str!` of the file in
//! `examples/`: cargo rebuilds a crate whenever a file it includes changes, and the tour
//! asks the user to edit `examples/quickstart.yaml`; each edit cost a release rebuild and
//! relink (146 s on 2 cores, issue 18). A unit test below keeps the two files identical.

use std::path::{Path, PathBuf};

use anyhow::Context;
use vane_proto::config::Config;
use vane_proto::{Format, load};

/// Where `vane dev` looks for the quickstart, relative to its current directory.
pub(crate) const PATH: &str = "examples/quickstart.yaml";

/// The built-in copy, identical to the file in `examples/` (see the module header).
const BUILT_IN: &str = include_str!("quickstart.yaml");

/// The demo backends' addresses as the quickstart spells them (`vane dev --backends`
/// defaults): endpoints at these addresses are pointed at the backends actually started.
const DEMO_BACKENDS: [&str; 2] = ["127.0.0.1:9001", "127.0.0.1:9002"];

/// Where the quickstart came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Read at start from this file.
    File(PathBuf),
    /// The copy built into the binary: no `examples/quickstart.yaml` under this directory.
    BuiltIn { dir: PathBuf },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::BuiltIn { dir } => {
                write!(f, "the quickstart built into vane (no {PATH} in {})", dir.display())
            }
        }
    }
}

/// The quickstart for a `vane dev` started in `dir`: `dir/examples/quickstart.yaml` when
/// that file exists (an error names it when it cannot be read or parsed: a tour edit gone
/// wrong is reported, not replaced by the built-in copy), else the built-in copy.
pub(crate) fn load_from(dir: &Path) -> anyhow::Result<(Config, Source)> {
    let path = dir.join(PATH);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let config = load(&text, Format::Yaml).with_context(|| format!("{}", path.display()))?;
            Ok((config, Source::File(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let config = load(BUILT_IN, Format::Yaml).context("the built-in quickstart")?;
            Ok((config, Source::BuiltIn { dir: dir.to_owned() }))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Points the quickstart at what `vane dev` started: endpoints written as the default demo
/// backend addresses go to the backends' real addresses (`--backends`, port 0 in tests),
/// and the `web` listener moves to `web` when given (`--web`).
pub(crate) fn adapt(config: &mut Config, backends: [std::net::SocketAddr; 2], web: Option<std::net::SocketAddr>) {
    for endpoint in config.clusters.iter_mut().flat_map(|c| c.endpoints.iter_mut()) {
        if let Some(i) = DEMO_BACKENDS.iter().position(|d| *d == endpoint.address) {
            endpoint.address = backends[i].to_string();
        }
    }
    if let Some(web) = web {
        for listener in config.listeners.iter_mut().filter(|l| l.name == "web") {
            listener.address = web.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read at test time, not included: an `include_str!` here would make every edit of
    /// the tour's file rebuild the crate's tests, and fail to build rather than explain.
    fn examples_file() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart.yaml");
        std::fs::read_to_string(path).expect("examples/quickstart.yaml")
    }

    #[test]
    fn built_in_copy_matches_examples_file() {
        assert!(
            examples_file() == BUILT_IN,
            "examples/quickstart.yaml differs from the copy built into vane (cli/src/quickstart.yaml). \
             After the tour: `git checkout examples/quickstart.yaml`. To change the quickstart, \
             change both files the same way."
        );
    }

    #[test]
    fn built_in_copy_is_valid() {
        let config = load(BUILT_IN, Format::Yaml).expect("parses");
        vane_proto::validate(&config).expect("valid");
        assert!(config.listeners.iter().any(|l| l.name == "web"), "the tour's `web` listener");
    }

    #[test]
    fn reads_the_file_when_there_else_the_built_in_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (config, source) = load_from(dir.path()).expect("built in");
        assert_eq!(source, Source::BuiltIn { dir: dir.path().to_owned() });
        assert!(config.routes.iter().any(|r| r.name == "api"));

        std::fs::create_dir(dir.path().join("examples")).expect("mkdir");
        let edited = BUILT_IN.replace("name: api", "name: edited");
        std::fs::write(dir.path().join(PATH), edited).expect("write");
        let (config, source) = load_from(dir.path()).expect("from the file");
        assert_eq!(source, Source::File(dir.path().join(PATH)));
        assert!(config.routes.iter().any(|r| r.name == "edited"));

        std::fs::write(dir.path().join(PATH), "listeners: [ { nme: web } ]").expect("write");
        let error = format!("{:#}", load_from(dir.path()).expect_err("a bad edit is an error"));
        assert!(error.contains("examples/quickstart.yaml"), "{error}");
    }

    #[test]
    fn adapt_moves_only_the_demo_addresses() {
        let mut config = load(BUILT_IN, Format::Yaml).expect("parses");
        config.clusters[0]
            .endpoints
            .push(vane_proto::config::Endpoint { address: "10.0.0.1:80".into(), ..Default::default() });
        let backends = ["127.0.0.1:4001".parse().unwrap(), "127.0.0.1:4002".parse().unwrap()];
        adapt(&mut config, backends, Some("127.0.0.1:4080".parse().unwrap()));
        let addresses: Vec<&str> = config.clusters[0].endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, ["127.0.0.1:4001", "127.0.0.1:4002", "10.0.0.1:80"]);
        assert_eq!(config.listeners[0].address, "127.0.0.1:4080");
    }
}
