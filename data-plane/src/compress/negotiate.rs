//! Content-coding negotiation (RFC 9110 12.5.3): which of a compression's encodings a
//! request's `Accept-Encoding` lets the response use.
//!
//! The client's q-values decide; among codings it rates equally the server's order of
//! preference wins (browsers and `curl --compressed` rate every coding alike, so in
//! practice the server's order picks). `q=0` refuses a coding, `*` rates every coding the
//! client did not name, and an explicit `identity` rated above every offered coding keeps
//! the response as it is. No `Accept-Encoding` at all is read as nginx and Envoy read it:
//! no compression (RFC 9110 would allow any coding, but clients that decode always say so).
//! Malformed elements are ignored. Nothing here allocates.

use http::HeaderValue;

/// A content coding Vane produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    pub(crate) const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Brotli, Encoding::Zstd];

    /// The `Content-Encoding` token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The encoding a config token names (validated: `zstd`, `br`, `gzip`).
    pub(crate) fn from_token(token: &str) -> Option<Encoding> {
        Encoding::ALL.into_iter().find(|e| e.token() == token)
    }

    /// Its slot in per-encoding arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Picks the encoding for a request whose `Accept-Encoding` lines are `accept`, among
/// `offered` (the server's order of preference); `None`: send the response as it is.
pub(crate) fn choose<'a>(accept: impl Iterator<Item = &'a HeaderValue>, offered: &[Encoding]) -> Option<Encoding> {
    // Thousandths; None: not named.
    let mut named: [Option<u16>; 3] = [None; 3];
    let (mut star, mut identity, mut any) = (None, None, false);
    for line in accept {
        any = true;
        for element in line.as_bytes().split(|b| *b == b',') {
            let Some((coding, q)) = element_of(element) else { continue };
            if coding.eq_ignore_ascii_case(b"*") {
                star = Some(q);
            } else if coding.eq_ignore_ascii_case(b"identity") {
                identity = Some(q);
            } else if let Some(e) = coding_of(coding) {
                // The highest rating a coding gets, should it be named twice.
                let slot = &mut named[e.index()];
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
    }
    if !any {
        return None;
    }
    let mut best: Option<(Encoding, u16)> = None;
    for &e in offered {
        let q = named[e.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    let (e, q) = best?;
    // A client that rates identity above every coding it accepts gets the response as is.
    if identity.is_some_and(|i| i > q) { None } else { Some(e) }
}

fn coding_of(token: &[u8]) -> Option<Encoding> {
    if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip") {
        Some(Encoding::Gzip)
    } else if token.eq_ignore_ascii_case(b"br") {
        Some(Encoding::Brotli)
    } else if token.eq_ignore_ascii_case(b"zstd") {
        Some(Encoding::Zstd)
    } else {
        None
    }
}

/// `coding [; q=value]` with its weight in thousandths; `None` for an empty or malformed
/// element.
fn element_of(element: &[u8]) -> Option<(&[u8], u16)> {
    let mut parts = element.split(|b| *b == b';');
    let coding = parts.next()?.trim_ascii();
    if coding.is_empty() {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let eq = param.iter().position(|b| *b == b'=')?;
        let (name, value) = param.split_at(eq);
        if name.trim_ascii().eq_ignore_ascii_case(b"q") {
            q = qvalue(value.get(1..)?.trim_ascii())?;
        }
    }
    Some((coding, q))
}

/// RFC 9110 `qvalue`: `0[.ddd]` or `1[.000]`, in thousandths.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (whole, fraction) = match v.split_first()? {
        (b'0', rest) => (0u16, rest),
        (b'1', rest) => (1000, rest),
        _ => return None,
    };
    let digits = match fraction {
        [] => return Some(whole),
        [b'.', digits @ ..] if digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for i in 0..3 {
        thousandths = thousandths * 10 + digits.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    if whole == 1000 && thousandths > 0 { None } else { Some(whole + thousandths) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFERRED: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    fn pick(lines: &[&'static str]) -> Option<&'static str> {
        let values: Vec<HeaderValue> = lines.iter().map(|l| HeaderValue::from_static(l)).collect();
        choose(values.iter(), &PREFERRED).map(Encoding::token)
    }

    #[test]
    fn equal_ratings_go_to_the_servers_preference() {
        // Chrome, Firefox, curl --compressed.
        assert_eq!(pick(&["gzip, deflate, br, zstd"]), Some("zstd"));
        assert_eq!(pick(&["deflate, gzip, br, zstd"]), Some("zstd"));
        // Safari.
        assert_eq!(pick(&["gzip, deflate, br"]), Some("br"));
        assert_eq!(pick(&["gzip"]), Some("gzip"));
        assert_eq!(pick(&["GZIP"]), Some("gzip"));
        assert_eq!(pick(&["x-gzip"]), Some("gzip"));
        let values = [HeaderValue::from_static("gzip, br, zstd")];
        assert_eq!(choose(values.iter(), &[Encoding::Gzip, Encoding::Brotli]), Some(Encoding::Gzip));
    }

    #[test]
    fn q_values_rank_codings_and_zero_refuses() {
        assert_eq!(pick(&["gzip;q=1.0, br;q=0.5, zstd;q=0.8"]), Some("gzip"));
        assert_eq!(pick(&["gzip;q=0.2, br ; Q=0.9"]), Some("br"));
        assert_eq!(pick(&["zstd;q=0, br;q=0, gzip;q=0.001"]), Some("gzip"));
        assert_eq!(pick(&["gzip;q=0"]), None);
        assert_eq!(pick(&["gzip;q=0.000"]), None);
        // Two lines are one list.
        assert_eq!(pick(&["gzip;q=0.5", "br;q=0.6"]), Some("br"));
    }

    #[test]
    fn star_rates_the_codings_not_named_and_identity_can_win() {
        assert_eq!(pick(&["*"]), Some("zstd"));
        assert_eq!(pick(&["zstd;q=0, *"]), Some("br"));
        assert_eq!(pick(&["*;q=0"]), None);
        assert_eq!(pick(&["gzip, *;q=0"]), Some("gzip"));
        assert_eq!(pick(&["identity"]), None);
        assert_eq!(pick(&["identity;q=1, gzip;q=0.5"]), None);
        assert_eq!(pick(&["identity;q=0.5, gzip"]), Some("gzip"));
        assert_eq!(pick(&["identity;q=0, gzip"]), Some("gzip"));
    }

    #[test]
    fn no_header_an_empty_one_or_garbage_means_no_compression() {
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[""]), None);
        assert_eq!(pick(&["deflate, compress"]), None);
        assert_eq!(pick(&["gzip;q=2"]), None);
        assert_eq!(pick(&["gzip;q=1.5"]), None);
        assert_eq!(pick(&["gzip;q=0.1234"]), None);
        assert_eq!(pick(&["gzip;q"]), None);
        assert_eq!(pick(&["gzip;q=abc, br"]), Some("br"));
        assert_eq!(pick(&[",,; ,gzip"]), Some("gzip"));
    }
}
