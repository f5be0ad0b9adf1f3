//! What the `vane` command says when something is wrong: each cause once, the fix when
//! there is an obvious one, and an invalid file called invalid by every command that reads
//! one.

use vane_suite::*;

/// The `: `-separated parts of an error line that repeat the part before them.
fn repeated_parts(line: &str) -> Vec<&str> {
    let parts: Vec<&str> = line.split(": ").collect();
    parts.windows(2).filter(|w| w[0] == w[1]).map(|w| w[1]).collect()
}

#[tokio::test]
async fn a_refused_connection_names_its_cause_once() {
    init_logs();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let out = vane(&url, &["nodes"]).await;
    assert!(!out.success);
    let line = out.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with(&format!("error: cannot reach control plane at {url}: ")), "{line}");
    assert_eq!(line.to_lowercase().matches("connection refused").count(), 1, "the cause, once: {line}");
    assert!(line.matches("tcp connect error").count() <= 1, "{line}");
    assert!(repeated_parts(line).is_empty(), "{line}");
}

#[tokio::test]
async fn a_second_node_on_a_taken_admin_port_says_so_once_and_what_to_change() {
    init_logs();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cp = format!("http://{closed}");
    let out = vane(&cp, &["proxy", "--control-plane", &cp, "--node-id", "second", "--admin", &admin]).await;
    assert!(!out.success);
    let line = out.stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("{}", out.stderr));
    assert_eq!(
        line,
        format!(
            "error: admin endpoint {admin} is in use by another process (another node on this host? \
             give each node its own --admin ADDR, and its own --state-dir)"
        )
    );
    drop(taken);
}

#[tokio::test]
async fn diff_of_an_invalid_file_shows_the_changes_then_fails_naming_the_field() {
    init_logs();
    let serving = Serving::start(|e| config_yaml(&[("echo", &[e])], &[("api", "/api", "echo")])).await;
    let url = serving.cp.url();
    let dir = tempfile::tempdir().unwrap();
    let valid = config_yaml(&[("echo", &[serving.echo.addr()])], &[("api", "/v2", "echo")]);
    let invalid = write_yaml(dir.path(), "bad.yaml", &valid.replace("name: echo }", "name: nope }"));

    let out = vane(&url, &["diff", "-f", &invalid]).await;
    assert!(!out.success, "an invalid file fails diff as it fails validate: {}", out.stdout);
    assert!(out.stdout.contains("~ route api"), "the changes are still shown: {}", out.stdout);
    let validate = vane(&url, &["validate", "-f", &invalid]).await;
    assert!(!validate.success);
    assert_eq!(out.stderr, validate.stderr, "diff says what validate says");
    assert_eq!(
        out.stderr.trim(),
        "error: invalid config: route 'api': forward.clusters[0].name: unknown cluster 'nope'"
    );

    let json = vane(&url, &["diff", "-f", &invalid, "-o", "json"]).await;
    assert!(!json.success);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["errors"][0]["field"], "forward.clusters[0].name", "{json}");

    // A valid file: exit 0, no errors, changes or not.
    let ok = vane(&url, &["diff", "-f", &write_yaml(dir.path(), "ok.yaml", &valid), "-o", "json"]).await;
    assert!(ok.success, "{}", ok.stderr);
    let json: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert!(json["errors"].is_null(), "{json}");
}
