//! Text from configs and requests, made safe to show: control characters escaped (a name
//! or path echoed in an error must not drive the user's terminal) and lengths bounded (a
//! gRPC status travels in HTTP/2 headers, which peers cap at 16 KiB by default), and
//! error chains said with each cause once (see [`error_chain`]).

use std::borrow::Cow;

/// `text` with control characters and bidirectional-override characters written as Rust
/// escapes (`\u{1b}`, `\n`); other characters, quotes included, unchanged.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the Unicode bidirectional controls, which can
/// reorder what a terminal shows.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` cut to at most `max` bytes (on a character boundary), with `...` marking the cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &text[..end]))
}

/// `e` and its causes (`source()`), joined by `: `, each cause said once.
///
/// Errors disagree on whether their message includes their cause: Vane's own say it
/// (`admin endpoint 127.0.0.1:9901: Address already in use (os error 98)`, so that a log
/// line with `%error` is whole) and also return it as `source()`; some libraries wrap an
/// error in one that displays as it does (tonic's connect error around hyper's). Walking
/// the chain naively, as `anyhow`'s `{:#}` does, then repeats the cause
/// (`tcp connect error: tcp connect error`). Here a cause whose text the line already ends
/// with is skipped, so every cause appears once whichever convention an error follows.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_controls("plain 'name' ünï"), "plain 'name' ünï");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{1b}[31mb\n\u{7f}"), "a\\u{1b}[31mb\\n\\u{7f}");
        assert_eq!(escape_controls("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghij", 8), "abcde...");
        let cut = truncate("ééééé", 8);
        assert!(cut.len() <= 8 && cut.ends_with("..."), "{cut}");
    }

    #[derive(Debug)]
    struct Wrap {
        message: String,
        source: Option<Box<dyn std::error::Error + 'static>>,
    }

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref()
        }
    }

    fn wrap(message: &str, source: impl std::error::Error + 'static) -> Wrap {
        Wrap { message: message.into(), source: Some(Box::new(source)) }
    }

    fn refused() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
    }

    #[test]
    fn each_cause_is_said_once_whether_or_not_a_message_includes_its_source() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        // A message that includes its source, and returns it too.
        let admin = wrap(&format!("admin endpoint 127.0.0.1:9901: {}", io()), io());
        assert_eq!(error_chain(&admin), format!("admin endpoint 127.0.0.1:9901: {}", io()));
        // A wrapper that displays as what it wraps (tonic around hyper's connect error).
        let hyper = wrap("tcp connect error", refused());
        let tonic = wrap("transport error", wrap("tcp connect error", hyper));
        assert_eq!(error_chain(&tonic), format!("transport error: tcp connect error: {}", refused()));
        // A message that leaves its source out: the source is added.
        assert_eq!(
            error_chain(&wrap("reading the document", refused())),
            format!("reading the document: {}", refused())
        );
    }
}
