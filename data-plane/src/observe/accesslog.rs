//! Access logs: one line per request (or per TCP connection), JSON or text, to a file or
//! standard output.
//!
//! The request path only fills a [`Line`] (cheap clones of what the request already
//! holds) and `try_send`s it on a bounded channel; a dedicated writer thread per
//! destination formats and writes, flushing whenever the channel runs empty. A full
//! channel drops the line and counts it: logging never blocks or slows a request beyond
//! that send. Sinks are shared by destination and live as long as a runtime uses them;
//! when the last one goes, the channel closes and the thread drains and exits.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use http::header::HeaderValue;
use http::uri::Authority;
use http::{Method, Uri, Version};
use tokio::sync::mpsc;
use tracing::warn;
use vane_proto::config::access_log::Format;

use super::json::push_str as json_str;
use super::streams::{self, StreamLine};

/// Lines buffered per destination before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Node-wide access log counters.
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    pub(crate) lines: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// One request, as logged.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) time: SystemTime,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream: Option<Authority>,
    pub(crate) upstream_time: Option<Duration>,
    pub(crate) listener: Arc<str>,
    /// None: no route (or no cluster) took the request.
    pub(crate) route: Option<Arc<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) referer: Option<HeaderValue>,
    /// Why the exchange ended early, when it did: `request_body_timeout` (the client's
    /// body stopped arriving), `response_too_large` (the route's `max_response_bytes`).
    pub(crate) error: Option<&'static str>,
}

/// What a writer is sent: a request's line, or a TCP connection's
/// ([`super::streams::StreamLine`]). The request line stays unboxed (the common case: no
/// allocation per request, and the queue's slots are the size they always were); the
/// stream line is boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // unboxed on purpose: see above
enum Entry {
    Request(Line),
    Stream(Box<StreamLine>),
}

/// Where lines of one (destination, format) go.
#[derive(Debug)]
pub(crate) struct Sink {
    tx: mpsc::Sender<Entry>,
    counters: Arc<LogCounters>,
}

impl Sink {
    pub(crate) fn send(&self, line: Line) {
        self.enqueue(Entry::Request(line));
    }

    /// Logs a TCP connection (or a UDP session) that ended.
    pub(crate) fn send_stream(&self, line: StreamLine) {
        self.enqueue(Entry::Stream(Box::new(line)));
    }

    fn enqueue(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => self.counters.lines.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Open sinks by (path, format); weak so that unused ones close.
#[derive(Debug, Default)]
pub(crate) struct Sinks {
    open: Mutex<HashMap<(String, i32), Weak<Sink>>>,
    pub(crate) counters: Arc<LogCounters>,
}

impl Sinks {
    /// The sink for a listener's access log config, opening the destination if needed.
    pub(crate) fn get(&self, config: &vane_proto::config::AccessLog) -> Result<Arc<Sink>, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, weak| weak.strong_count() > 0);
        let key = (config.path.clone(), config.format);
        if let Some(sink) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(sink);
        }
        let out: Box<dyn Write + Send> = if config.path.is_empty() {
            Box::new(std::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.path)
                .map_err(|e| format!("cannot open {}: {e}", config.path))?;
            Box::new(file)
        };
        let format = Format::try_from(config.format).unwrap_or(Format::Json);
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("vane-access-log".into())
            .spawn(move || write_lines(rx, out, format))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        let sink = Arc::new(Sink { tx, counters: self.counters.clone() });
        open.insert(key, Arc::downgrade(&sink));
        Ok(sink)
    }
}

/// How long the writer rests after each batch. While it rests it holds no waker, so
/// senders enqueue without waking a thread: under load one wake-up writes a whole batch
/// instead of one line (a wake per request would cost more than the formatting).
const BATCH_PAUSE: Duration = Duration::from_millis(5);

fn write_lines(mut rx: mpsc::Receiver<Entry>, out: Box<dyn Write + Send>, format: Format) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut text = String::with_capacity(512);
    while let Some(line) = rx.blocking_recv() {
        let mut next = Some(line);
        // Write everything queued, then flush once.
        while let Some(line) = next {
            text.clear();
            match (format, &line) {
                (Format::Json, Entry::Request(line)) => json(line, &mut text),
                (Format::Text, Entry::Request(line)) => combined(line, &mut text),
                (Format::Json, Entry::Stream(line)) => streams::json(line, &mut text),
                (Format::Text, Entry::Stream(line)) => streams::text(line, &mut text),
            }
            if let Err(error) = out.write_all(text.as_bytes()) {
                warn!(%error, "access log write failed");
            }
            next = rx.try_recv().ok();
        }
        if let Err(error) = out.flush() {
            warn!(%error, "access log flush failed");
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

fn header_str(v: &Option<HeaderValue>) -> Option<String> {
    v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn path(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

/// A header value as text: borrowed unless it is not UTF-8.
fn header(v: &Option<HeaderValue>) -> Option<std::borrow::Cow<'_, str>> {
    v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()))
}

fn json_opt(out: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.push_str("null"),
    }
}

/// One JSON object per line; absent values are `null`. Written by hand: building a
/// `serde_json::Value` per line costs a map and a string per field.
fn json(l: &Line, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("{\"time\":\"");
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(l.time));
    out.push_str("\",\"client\":\"");
    let _ = write!(out, "{}", l.client);
    out.push_str("\",\"method\":");
    json_str(out, l.method.as_str());
    out.push_str(",\"host\":");
    json_opt(out, header(&l.host).as_deref());
    out.push_str(",\"path\":");
    json_str(out, path(&l.uri));
    let _ = write!(
        out,
        ",\"protocol\":\"{}\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{}",
        version(l.version),
        l.status,
        l.bytes_in,
        l.bytes_out,
        millis(l.duration)
    );
    out.push_str(",\"upstream\":");
    json_opt(out, l.upstream.as_ref().map(Authority::as_str));
    out.push_str(",\"upstream_ms\":");
    match l.upstream_time {
        Some(t) => {
            let _ = write!(out, "{}", millis(t));
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"listener\":");
    json_str(out, &l.listener);
    out.push_str(",\"route\":");
    json_str(out, l.route.as_deref().unwrap_or(""));
    out.push_str(",\"cluster\":");
    json_str(out, l.cluster.as_deref().unwrap_or(""));
    out.push_str(",\"request_id\":");
    json_opt(out, header(&l.request_id).as_deref());
    out.push_str(",\"user_agent\":");
    json_opt(out, header(&l.user_agent).as_deref());
    out.push_str(",\"referer\":");
    json_opt(out, header(&l.referer).as_deref());
    out.push_str(",\"error\":");
    json_opt(out, l.error);
    out.push_str("}\n");
}

/// Combined log format, then Vane's fields as `key=value`:
/// `client - - [time] "METHOD path PROTO" status bytes "referer" "agent" host=.. rt=.. ut=.. upstream=.. listener=.. route=.. cluster=.. rid=.. in=..`,
/// and ` error=..` before the line's end when the exchange ended early.
fn combined(l: &Line, out: &mut String) {
    use std::fmt::Write as _;
    let quoted = |v: &Option<HeaderValue>| header_str(v).map_or_else(|| "-".to_owned(), |s| s.replace('"', "\\\""));
    let _ = writeln!(
        out,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" host={} rt={:.3} ut={} upstream={} listener={} route={} cluster={} rid={} in={}",
        l.client.ip(),
        humantime::format_rfc3339_millis(l.time),
        l.method,
        path(&l.uri),
        version(l.version),
        l.status,
        l.bytes_out,
        quoted(&l.referer),
        quoted(&l.user_agent),
        header_str(&l.host).unwrap_or_else(|| "-".into()),
        l.duration.as_secs_f64(),
        l.upstream_time.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64())),
        l.upstream.as_ref().map_or("-", Authority::as_str),
        l.listener,
        l.route.as_deref().unwrap_or("-"),
        l.cluster.as_deref().unwrap_or("-"),
        header_str(&l.request_id).unwrap_or_else(|| "-".into()),
        l.bytes_in,
    );
    if let Some(error) = l.error {
        // Before the newline `writeln!` ended the line with.
        out.pop();
        let _ = writeln!(out, " error={error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.1:5000".parse().unwrap(),
            method: Method::POST,
            host: Some(HeaderValue::from_static("shop.example")),
            uri: "/cart?id=1".parse().unwrap(),
            version: Version::HTTP_11,
            status: 201,
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_micros(2_500),
            upstream: Some(Authority::from_static("127.0.0.1:9001")),
            upstream_time: Some(Duration::from_micros(2_000)),
            listener: "web".into(),
            route: Some("cart".into()),
            cluster: Some("shop".into()),
            request_id: Some(HeaderValue::from_static("abc")),
            user_agent: Some(HeaderValue::from_static("curl/8")),
            referer: None,
            error: None,
        }
    }

    #[test]
    fn json_lines_hold_every_field() {
        let mut out = String::new();
        json(&line(), &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(
            (v["method"].as_str(), v["path"].as_str(), v["status"].as_u64()),
            (Some("POST"), Some("/cart?id=1"), Some(201))
        );
        assert_eq!((v["duration_ms"].as_f64(), v["upstream_ms"].as_f64()), (Some(2.5), Some(2.0)));
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["error"], serde_json::Value::Null);
    }

    #[test]
    fn json_escapes_what_clients_send() {
        let mut l = line();
        l.user_agent = Some(HeaderValue::from_bytes(b"evil\"\\agent").unwrap());
        l.uri = "/a%22b".parse().unwrap();
        let mut out = String::new();
        json(&l, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["user_agent"], "evil\"\\agent");
        assert_eq!(v["path"], "/a%22b");
    }

    #[test]
    fn an_exchange_that_ended_early_says_why_in_both_formats() {
        let mut l = line();
        l.error = Some("response_too_large");
        let mut out = String::new();
        json(&l, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"], "response_too_large");
        out.clear();
        combined(&l, &mut out);
        assert!(out.ends_with(" rid=abc in=12 error=response_too_large\n"), "{out}");
    }

    #[test]
    fn text_lines_are_combined_log_format_plus_fields() {
        let mut out = String::new();
        combined(&line(), &mut out);
        assert_eq!(
            out,
            "192.0.2.1 - - [2023-11-14T22:13:20.123Z] \"POST /cart?id=1 HTTP/1.1\" 201 34 \"-\" \"curl/8\" host=shop.example rt=0.003 ut=0.002 upstream=127.0.0.1:9001 listener=web route=cart cluster=shop rid=abc in=12\n"
        );
    }
}
