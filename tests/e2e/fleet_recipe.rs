//! The README's "A fleet on one machine", run as it is written: its three shell blocks and
//! `examples/fleet.yaml`, read from the files, through the real `vane` binary, with every
//! port the recipe names replaced by one this test picked free.
//!
//! A small interpreter runs the few shapes of line the recipe uses (a variable set from
//! `$(vane ...)`, `export`, `VAR=value vane ... [2> FILE] [&]`, a `for` loop of `curl`,
//! `curl | grep`) and fails on any other line, so the README cannot drift into commands
//! this test does not run. Like a reader, it waits for each `&` command's ready line, and
//! for `vane nodes` to show both nodes at version 1 before it sends requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use vane_suite::*;

const WITHIN: Duration = Duration::from_secs(20);

/// The ports the recipe and `examples/fleet.yaml` name: the control plane, the two demo
/// backends, the two nodes' admin endpoints, the shared listener.
const PORTS: [u16; 6] = [18000, 9001, 9002, 9901, 9902, 8080];

/// The ```sh blocks of the README section `### A fleet on one machine`, in order.
fn recipe_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("### A fleet on one machine\n").expect("the README has the one-machine fleet section");
    let section = &readme[start..];
    let section = &section[..section[4..].find("\n##").map_or(section.len(), |end| end + 4)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("closed block");
        blocks.push(body[..close].to_owned());
        rest = &body[close + 3..];
    }
    blocks
}

/// Every `127.0.0.1:PORT` of `text` must be one of [`PORTS`]; each becomes its free port.
fn with_ports(text: &str, ports: &HashMap<u16, u16>) -> String {
    let mut out = text.to_owned();
    for piece in text.split("127.0.0.1:").skip(1) {
        let digits: String = piece.chars().take_while(char::is_ascii_digit).collect();
        let port: u16 = digits.parse().expect("a port after 127.0.0.1:");
        assert!(PORTS.contains(&port), "the recipe names port {port}, which this test does not replace");
    }
    for (from, to) in ports {
        out = out.replace(&format!("127.0.0.1:{from}"), &format!("127.0.0.1:{to}"));
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The words of a line as a shell splits them (quotes removed, `$(...)` kept whole), up
/// to a comment.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            '#' if word.is_empty() => break,
            '\'' | '"' => {
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            '$' if chars.peek() == Some(&'(') => {
                // A command substitution is one word, parentheses included.
                let mut depth = 0;
                word.push('$');
                for s in chars.by_ref() {
                    word.push(s);
                    match s {
                        '(' => depth += 1,
                        ')' if depth == 1 => break,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// `NAME=value`, when `word` is an assignment.
fn assignment(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once('=')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')).then_some((name, value))
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    (authority.parse().expect("ip:port"), path)
}

/// The shell state of the recipe: variables, exported ones, and the processes it started.
struct Shell {
    dir: PathBuf,
    vars: HashMap<String, String>,
    exported: HashMap<String, String>,
    background: Vec<(String, VaneProcess)>,
    /// Every foreground `vane` or `curl | grep` line run, with its standard output.
    outputs: Vec<(String, String)>,
}

impl Shell {
    fn expand(&self, word: &str) -> String {
        let mut out = word.to_owned();
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for name in names {
            out = out.replace(&format!("${name}"), &self.vars[name]);
        }
        assert!(!out.contains('$'), "'{word}' names a variable the recipe did not set");
        out
    }

    /// `vane ARGS` with the recipe's environment, as the reader's shell would start it.
    fn command(&self, env: &[(String, String)], args: &[String]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(vane_bin());
        command.args(args).current_dir(&self.dir).env_remove("VANE_TOKEN").env_remove("VANE_SERVER");
        command.envs(&self.exported).envs(env.iter().cloned());
        command
    }

    async fn output(&self, env: &[(String, String)], args: &[String]) -> std::process::Output {
        let output = self.command(env, args).stdin(Stdio::null()).output();
        tokio::time::timeout(WITHIN, output).await.expect("vane finished in time").expect("vane runs")
    }

    async fn run(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("for i in $(seq ") {
            let (count, rest) = rest.split_once("); do curl -s -o /dev/null ").expect("a curl loop");
            let url = rest.strip_suffix("; done").expect("the loop's end");
            let (addr, path) = split_url(url);
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            // curl opens a new connection each time, which the kernel may give either node.
            for _ in 0..count.parse::<u32>().expect("a count") {
                assert_eq!(raw_status(addr, request.as_bytes()).await, 200, "{line}");
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("curl -s ") {
            let (url, pattern) = rest.split_once(" | grep '").expect("curl | grep 'PATTERN'");
            let pattern = pattern.split_once('\'').expect("a quoted pattern").0;
            let prefix = pattern.strip_prefix('^').expect("an anchored pattern");
            let (addr, path) = split_url(url);
            let body = HttpClient::default().get(addr, &path).await.expect("curl's request").body;
            let matched: Vec<&str> = body.lines().filter(|l| l.starts_with(prefix)).collect();
            self.outputs.push((line.to_owned(), matched.join("\n")));
            return;
        }
        let mut words = split_words(line);
        if words.first().is_some_and(|w| w == "export") {
            for word in &words[1..] {
                let (name, value) = assignment(word).expect("export NAME=value");
                let value = self.expand(value);
                self.vars.insert(name.to_owned(), value.clone());
                self.exported.insert(name.to_owned(), value);
            }
            return;
        }
        if let [only] = &words[..]
            && let Some((name, value)) = assignment(only)
        {
            let inner = value.strip_prefix("$(").and_then(|v| v.strip_suffix(')')).expect("NAME=$(vane ...)");
            let args: Vec<String> = words_after_vane(&split_words(inner)).iter().map(|w| self.expand(w)).collect();
            let out = self.output(&[], &args).await;
            assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
            let value = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            assert_eq!(value.lines().count(), 1, "{line} prints one line: {value}");
            self.vars.insert(name.to_owned(), value);
            return;
        }
        let mut env = Vec::new();
        while let Some((name, value)) = words.first().and_then(|w| assignment(w)) {
            env.push((name.to_owned(), self.expand(value)));
            words.remove(0);
        }
        let background = words.last().is_some_and(|w| w == "&");
        if background {
            words.pop();
        }
        let mut stderr = None;
        if let Some(at) = words.iter().position(|w| w == "2>") {
            stderr = Some(self.dir.join(&words[at + 1]));
            words.drain(at..at + 2);
        }
        let args: Vec<String> = words_after_vane(&words).iter().map(|w| self.expand(w)).collect();
        if background {
            let mut command = self.command(&env, &args);
            let file = stderr.map(|path| std::fs::File::create(path).expect("the 2> file"));
            command.stderr(file.map_or_else(Stdio::null, Stdio::from));
            let process = VaneProcess::spawn(command).await.unwrap_or_else(|e| panic!("{line}: {e:#}"));
            self.background.push((line.to_owned(), process));
        } else {
            assert!(stderr.is_none(), "{line}: 2> on a foreground command");
            let out = self.output(&env, &args).await;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{line}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
            self.outputs.push((line.to_owned(), stdout));
        }
    }

    /// What the foreground line starting with `start` printed.
    fn printed(&self, start: &str) -> &str {
        self.outputs.iter().find(|(line, _)| line.starts_with(start)).map(|(_, out)| out.as_str()).expect(start)
    }

    /// `vane ARGS` as the recipe's own commands run it (its exported variables).
    async fn vane_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let out = self.output(&[], &args).await;
        serde_json::from_slice(&out.stdout).ok()
    }
}

/// The arguments of a `vane ...` command line.
fn words_after_vane(words: &[String]) -> &[String] {
    assert_eq!(words.first().map(String::as_str), Some("vane"), "the recipe runs only vane and curl: {words:?}");
    &words[1..]
}

/// The sum of the samples of `vane_http_requests_total` lines.
fn requests(metrics: &str) -> f64 {
    metrics.lines().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_one_machine_fleet_recipe_of_the_readme_runs_as_written() {
    init_logs();
    let blocks = recipe_blocks();
    assert_eq!(blocks.len(), 3, "start, apply, use: {blocks:?}");
    let ports: HashMap<u16, u16> = PORTS.iter().map(|p| (*p, free_port())).collect();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fleet.yaml")).unwrap();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    std::fs::write(dir.path().join("examples/fleet.yaml"), with_ports(&example, &ports)).unwrap();
    let mut shell = Shell {
        dir: dir.path().to_owned(),
        vars: HashMap::new(),
        exported: HashMap::new(),
        background: Vec::new(),
        outputs: Vec::new(),
    };
    let lines = |block: &str| -> Vec<String> {
        with_ports(block, &ports).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    };

    // 1. Tokens, backends, control plane, nodes: each `&` command said it is ready.
    for line in lines(&blocks[0]) {
        shell.run(&line).await;
    }
    let tokens = std::fs::read_to_string(dir.path().join("fleet-demo/tokens")).unwrap();
    assert_eq!(tokens.lines().count(), 2, "{tokens}");
    assert!(shell.vars["OPS_TOKEN"].starts_with("vane_") && shell.vars["EDGE_TOKEN"].starts_with("vane_"));
    let banners: Vec<&str> = shell.background.iter().map(|(_, p)| p.banner.as_str()).collect();
    assert_eq!(banners.len(), 4, "{banners:?}");
    assert!(banners[0].starts_with("vane demo-backend echo-1 on 127.0.0.1:"), "{banners:?}");
    assert!(banners[1].starts_with("vane control-plane listening on"), "{banners:?}");
    assert!(banners[2].starts_with("vane proxy edge-1 admin on") && banners[3].starts_with("vane proxy edge-2"));

    // 2. The config applied with the ops token; both nodes acknowledge it.
    for line in lines(&blocks[1]) {
        shell.run(&line).await;
    }
    let apply_line = lines(&blocks[1]).into_iter().find(|l| l.starts_with("vane apply")).unwrap();
    let promised = apply_line.split_once("# ").expect("the README says what apply prints").1;
    assert_eq!(shell.printed("vane apply").trim(), promised);
    assert!(shell.printed("vane nodes").starts_with("NODE "), "{}", shell.printed("vane nodes"));
    eventually(WITHIN, "vane nodes shows edge-1 and edge-2 serving version 1", || async {
        let json = shell.vane_json(&["nodes", "-o", "json"]).await?;
        let nodes = json["nodes"].as_array()?;
        let serving = nodes.iter().filter(|n| n["connected"] == true && n["version_held"] == "1").count();
        (serving == 2).then_some(())
    })
    .await;

    // 3. Forty requests on new connections: both nodes served some.
    for line in lines(&blocks[2]) {
        shell.run(&line).await;
    }
    let shares: Vec<f64> =
        shell.outputs.iter().filter(|(l, _)| l.starts_with("curl")).map(|(_, o)| requests(o)).collect();
    assert_eq!(shares.len(), 2);
    assert!(shares.iter().all(|n| *n > 0.0), "each node's counter shows requests: {:?}", shell.outputs);
    // The counters may trail the last answers by a moment: read them again until they add up.
    let admins: Vec<SocketAddr> = [9901, 9902].iter().map(|p| SocketAddr::from(([127, 0, 0, 1], ports[p]))).collect();
    eventually(WITHIN, "the nodes' request counters add up to 40", || async {
        let mut total = 0.0;
        for admin in &admins {
            let body = HttpClient::default().get(*admin, "/metrics").await.ok()?.body;
            let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("vane_http_requests_total")).collect();
            total += requests(&lines.join("\n"));
        }
        (total == 40.0).then_some(())
    })
    .await;
}
