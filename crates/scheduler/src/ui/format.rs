//! Text for the pages: durations, times, URL pieces. Everything here is plain text; the
//! templates escape it.

use std::time::{Duration, SystemTime};

/// Percent-encodes everything but RFC 3986's unreserved characters, so any text is safe as a
/// query value or a path segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from the pairs whose value is not empty; empty when none is.
pub fn query_string(params: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// A short human duration: `850ms`, `12.3s`, `4m 05s`, `3h 02m`, `2d 03h`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours:02}h")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else {
        format!("{minutes}m {seconds:02}s")
    }
}

/// How long from `from` to `to`; zero if the clock went backwards.
pub fn between(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or_default()
}

/// `2024-05-01T12:03:04Z`.
pub fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The URI as a link target, only when it is http(s): a worker reports these, and a
/// `javascript:` one must not become something to click.
pub fn http_link(uri: &str) -> Option<String> {
    let lower = uri.get(..8).unwrap_or(uri).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")).then(|| uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_leaves_only_unreserved_characters() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("127.0.0.1:10101"), "127.0.0.1%3A10101");
        assert_eq!(encode("<x y>&\"/é"), "%3Cx%20y%3E%26%22%2F%C3%A9");
        assert_eq!(query_string(&[("a", ""), ("b", "")]), "");
        assert_eq!(
            query_string(&[("a", "1"), ("b", ""), ("c", "x&y")]),
            "?a=1&c=x%26y"
        );
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 120)), "3h 02m");
        assert_eq!(
            duration(Duration::from_secs(2 * 86_400 + 3 * 3600)),
            "2d 03h"
        );
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
        assert_eq!(between(later, SystemTime::UNIX_EPOCH), Duration::ZERO);
        assert_eq!(timestamp(later), "1970-01-01T00:00:05Z");
    }

    #[test]
    fn only_http_uris_become_links() {
        let uri = "http://w:10100/output/0-stdout?file=file://w/tmp/0-stdout";
        assert_eq!(http_link(uri).as_deref(), Some(uri));
        assert!(http_link("HTTPS://w/x").is_some());
        assert_eq!(http_link("javascript:alert(1)"), None);
        assert_eq!(http_link("file:///etc/passwd"), None);
        assert_eq!(http_link(""), None);
    }
}
