//! Config files: YAML or JSON in the protobuf JSON mapping of [`Config`], with the proto
//! (snake_case) field names accepted and printed, durations as `"5s"`.

use std::fmt;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// The text format of a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The format a file name implies: `.json` is JSON, anything else YAML.
    pub fn from_path(path: &std::path::Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// A config file that could not be read into a [`Config`].
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl LoadError {
    fn new(format: Format, raw: String) -> LoadError {
        // pbjson reports two members of one oneof as a duplicate field; say what it means.
        let message = if raw.contains("duplicate field") {
            format!(
                "{raw} (a field was given twice, or two alternatives of one choice were set, e.g. both `prefix` and `exact`)"
            )
        } else {
            raw
        };
        let what = match format {
            Format::Yaml => "yaml",
            Format::Json => "json",
        };
        LoadError { message: format!("invalid {what}: {message}") }
    }
}

/// Reads a config from YAML or JSON text. An empty document is an empty config.
pub fn load(text: &str, format: Format) -> Result<Config, LoadError> {
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    let result = match format {
        Format::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
    };
    result.map_err(|raw| {
        // An integer that does not fit its field: serde's own text names no field.
        if raw.contains("did not match any variant of untagged enum") {
            let value: Option<serde_json::Value> = match format {
                Format::Yaml => serde_norway::from_str(text).ok(),
                Format::Json => serde_json::from_str(text).ok(),
            };
            let reason = value
                .as_ref()
                .and_then(crate::format_numbers::find)
                .unwrap_or_else(|| "a number field holds something else, or a number out of its range".into());
            return LoadError::new(format, reason);
        }
        LoadError::new(format, raw)
    })
}

/// Prints a config in the given format, proto field names, defaults left out.
pub fn render(config: &Config, format: Format) -> String {
    // Serialising generated messages into a String cannot fail: no maps with non-string
    // keys, no non-finite floats.
    match format {
        Format::Yaml => serde_norway::to_string(config).unwrap_or_default(),
        Format::Json => serde_json::to_string_pretty(config).map(|s| s + "\n").unwrap_or_default(),
    }
}

/// Hex sha256 of the protobuf encoding of a config: the identity of a version's content.
pub fn config_sha256(config: &Config) -> String {
    hex::encode(Sha256::digest(config.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listeners:
  - name: web
    address: 127.0.0.1:8080
    protocol: HTTP
clusters:
  - name: echo
    lb_policy: ROUND_ROBIN
    endpoints:
      - address: 127.0.0.1:9001
        weight: 3
      - address: 127.0.0.1:9002
routes:
  - name: api
    match: { prefix: /api }
    forward:
      clusters: [ { name: echo, weight: 100 } ]
"#;

    #[test]
    fn minimal_design_file_loads() {
        let config = load(MINIMAL, Format::Yaml).unwrap();
        assert_eq!(config.listeners[0].address, "127.0.0.1:8080");
        assert_eq!(config.clusters[0].endpoints[0].weight, 3);
        let route = &config.routes[0];
        assert_eq!(route.r#match.as_ref().unwrap().path, Some(crate::config::route_match::Path::Prefix("/api".into())));
        assert!(crate::validate(&config).is_ok());
    }

    #[test]
    fn rendered_yaml_loads_back_equal() {
        let config = load(MINIMAL, Format::Yaml).unwrap();
        for format in [Format::Yaml, Format::Json] {
            let text = render(&config, format);
            assert!(text.contains("lb_policy") || text.contains("endpoints"), "{text}");
            assert_eq!(load(&text, format).unwrap(), config);
        }
    }

    #[test]
    fn durations_and_camel_case_are_accepted() {
        let text = "routes:\n  - name: r\n    match: { exact: /x }\n    forward: { clusters: [{name: c}], timeout: 1.5s }\nclusters:\n  - name: c\n    lbPolicy: RANDOM\n    connect_timeout: 2s\n    endpoints: [{address: '127.0.0.1:1'}]\n";
        let config = load(text, Format::Yaml).unwrap();
        let Some(crate::config::route::Action::Forward(forward)) = config.routes[0].action.clone() else {
            panic!("a forward")
        };
        assert_eq!(forward.timeout.unwrap().nanos, 500_000_000);
        assert_eq!(config.clusters[0].connect_timeout.unwrap().seconds, 2);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = load("routes:\n  - name: r\n    colour: red\n", Format::Yaml).unwrap_err().to_string();
        assert!(err.contains("routes[0]"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn two_path_kinds_are_explained() {
        let err =
            load("routes:\n  - name: r\n    match: { prefix: /a, exact: /b }\n", Format::Yaml).unwrap_err().to_string();
        assert!(err.contains("both `prefix` and `exact`"), "{err}");
    }

    #[test]
    fn an_out_of_range_integer_names_its_field_and_range() {
        let text = "clusters:\n  - name: c\n    endpoints:\n      - address: 127.0.0.1:1\n        weight: 4294967297\n";
        let err = load(text, Format::Yaml).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid yaml: clusters[0].endpoints[0].weight: 4294967297 is out of range for a 32-bit unsigned integer (0 to 4294967295)"
        );
    }

    #[test]
    fn sha_changes_with_content() {
        let a = load(MINIMAL, Format::Yaml).unwrap();
        let mut b = a.clone();
        b.routes[0].name = "other".into();
        assert_ne!(config_sha256(&a), config_sha256(&b));
        assert_eq!(config_sha256(&a), config_sha256(&a.clone()));
    }

    #[test]
    fn sha_of_a_config_with_maps_survives_a_round_trip_through_the_wire() {
        let text = "consumers:\n  - name: c\n    metadata: { z: '1', a: '2', m: '3', b: '4', y: '5', c: '6' }\n";
        let config = load(text, Format::Yaml).unwrap();
        let decoded = Config::decode(config.encode_to_vec().as_slice()).unwrap();
        assert_eq!(config_sha256(&config), config_sha256(&decoded));
        let keys: Vec<&str> = decoded.consumers[0].metadata.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "b", "c", "m", "y", "z"], "maps encode in key order");
    }
}
