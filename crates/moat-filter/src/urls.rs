//! URL extraction from text and HTML: plain URLs, `www.` forms, HTML attributes (with
//! entities decoded), scheme-relative links and defanged forms (`hxxp`, `[.]`, `(dot)`).

use memchr::memmem;
use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Collects URLs (normalised to have a scheme) and their hosts, without duplicates.
#[derive(Debug, Default)]
pub(crate) struct UrlSink {
    pub(crate) urls: Vec<String>,
    pub(crate) hosts: Vec<String>,
    pub(crate) max: usize,
    seen_urls: HashSet<String>,
    seen_hosts: HashSet<String>,
}

impl UrlSink {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// True when the URL limit is reached.
    pub(crate) fn full(&self) -> bool {
        self.urls.len() >= self.max
    }

    fn push(&mut self, url: String) {
        if self.full() || !self.seen_urls.insert(url.clone()) {
            return;
        }
        if let Some(host) = host_of(&url)
            && self.seen_hosts.insert(host.clone())
        {
            self.hosts.push(host);
        }
        self.urls.push(url);
    }
}

fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '"' | '\'' | '<' | '>' | '`' | '{' | '}' | '|' | '\\' | '^'
        )
}

/// Undoes the common ways of writing a link so that it is not clickable.
fn undefang(text: &str) -> Cow<'_, str> {
    const MARKS: [(&str, &str); 8] = [
        ("hxxps://", "https://"),
        ("hxxp://", "http://"),
        ("hXXp", "http"),
        ("[:]", ":"),
        ("[.]", "."),
        ("(.)", "."),
        ("[dot]", "."),
        ("(dot)", "."),
    ];
    if !MARKS
        .iter()
        .any(|(m, _)| memmem::find(text.as_bytes(), m.as_bytes()).is_some())
    {
        return Cow::Borrowed(text);
    }
    let mut s = text.to_string();
    for (m, r) in MARKS {
        s = s.replace(m, r);
    }
    Cow::Owned(s)
}

/// Finds URLs in plain text.
pub(crate) fn from_text(text: &str, sink: &mut UrlSink) {
    const PREFIXES: [&str; 4] = ["http://", "https://", "ftp://", "www."];
    let text = undefang(text);
    let lower = text.to_ascii_lowercase();
    // Next occurrence of each prefix at or after `i` (usize::MAX: none left). Each search
    // only moves forward, so the whole scan is linear in the text.
    let mut next = [0usize; 4];
    let mut fresh = [false; 4];
    let mut i = 0;
    while i < lower.len() && !sink.full() {
        for k in 0..PREFIXES.len() {
            if !fresh[k] || (next[k] != usize::MAX && next[k] < i) {
                next[k] = memmem::find(&lower.as_bytes()[i..], PREFIXES[k].as_bytes())
                    .map_or(usize::MAX, |at| i + at);
                fresh[k] = true;
            }
        }
        let Some(k) = (0..PREFIXES.len()).min_by_key(|k| next[*k]) else {
            break;
        };
        if next[k] == usize::MAX {
            break;
        }
        let (start, prefix) = (next[k], PREFIXES[k]);
        // `www.` inside a longer word (or inside a URL already taken) is not a new URL.
        let glued = text[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '/' | '.' | '@' | '-'));
        let end = text[start..]
            .char_indices()
            .find(|(_, c)| ends_url(*c))
            .map_or(text.len(), |(j, _)| start + j);
        let raw = text[start..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']']);
        if !(prefix == "www." && glued) && raw.len() > prefix.len() {
            let url = if prefix == "www." {
                format!("http://{raw}")
            } else {
                raw.to_string()
            };
            sink.push(url);
        }
        i = end.max(start + prefix.len());
    }
}

/// Decodes the HTML entities that matter in links: `&amp;` and friends and numeric ones.
pub(crate) fn decode_entities(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find('&') {
        out.push_str(&rest[..p]);
        rest = &rest[p..];
        // `;` is ASCII, so its byte position is a char boundary.
        let semi = rest.as_bytes()[..rest.len().min(12)]
            .iter()
            .position(|b| *b == b';');
        let decoded = semi.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "sol" => Some('/'),
                "colon" => Some(':'),
                "period" => Some('.'),
                _ => {
                    let n = if let Some(h) = ent.strip_prefix("#x").or(ent.strip_prefix("#X")) {
                        u32::from_str_radix(h, 16).ok()
                    } else {
                        ent.strip_prefix('#').and_then(|d| d.parse().ok())
                    };
                    n.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Longest attribute value examined, in bytes.
const MAX_ATTR: usize = 8 * 1024;

/// Finds URLs in HTML markup: link attributes first, then any URL-looking text.
pub(crate) fn from_html(html: &str, sink: &mut UrlSink) {
    let lower = html.to_ascii_lowercase();
    for attr in ["href", "src", "action", "background", "formaction"] {
        let mut from = 0;
        while let Some(p) = memmem::find(&lower.as_bytes()[from..], attr.as_bytes()) {
            let at = from + p;
            from = at + attr.len();
            let before_ok = lower[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_whitespace() || c == '<' || c == '"' || c == '\'');
            let after = lower[from..].trim_start();
            if !before_ok || !after.starts_with('=') {
                continue;
            }
            let vstart = html.len() - after.len() + 1;
            // Values longer than this are not links; the bound keeps the scan linear when
            // an attribute has no closing quote.
            let mut wend = (vstart + MAX_ATTR).min(html.len());
            while !html.is_char_boundary(wend) {
                wend -= 1;
            }
            let v = html[vstart..wend].trim_start();
            let value = match v.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let inner = &v[1..];
                    &inner[..inner.find(q).unwrap_or(inner.len())]
                }
                _ => {
                    let end = v
                        .find(|c: char| c.is_whitespace() || c == '>')
                        .unwrap_or(v.len());
                    &v[..end]
                }
            };
            let value = decode_entities(value.trim());
            let lv = value.to_ascii_lowercase();
            if lv.starts_with("//") {
                sink.push(format!("http:{value}"));
            } else if lv.starts_with("http:") || lv.starts_with("https:") || lv.starts_with("ftp:")
            {
                // Browsers accept `http:\\host` and stray whitespace; normalise the slashes.
                let norm: String = value.replace('\\', "/").split_whitespace().collect();
                sink.push(norm);
            } else if lv.starts_with("www.") {
                sink.push(format!("http://{value}"));
            }
            if sink.full() {
                return;
            }
        }
    }
    from_text(&decode_entities(html), sink);
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host of a URL: userinfo and port dropped, percent-encoding undone, lower-cased,
/// a whole-number IPv4 address (`http://3232235777/`) written as dotted quad.
pub(crate) fn host_of(url: &str) -> Option<String> {
    let after = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = after
        .split(['/', '?', '#', '\\'])
        .next()
        .unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_string()
    } else {
        hostport.split(':').next().unwrap_or_default().to_string()
    };
    let host = percent_decode(&host).trim_end_matches('.').to_lowercase();
    if host.is_empty() {
        return None;
    }
    if let Some(n) = parse_int(&host)
        && let Ok(n) = u32::try_from(n)
    {
        return Some(Ipv4Addr::from(n).to_string());
    }
    Some(host)
}

fn parse_int(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 10 {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_urls(s: &str) -> (Vec<String>, Vec<String>) {
        let mut sink = UrlSink::new(100);
        from_text(s, &mut sink);
        (sink.urls, sink.hosts)
    }

    fn html_urls(s: &str) -> (Vec<String>, Vec<String>) {
        let mut sink = UrlSink::new(100);
        from_html(s, &mut sink);
        (sink.urls, sink.hosts)
    }

    #[test]
    fn text_table() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "see http://example.com/a?b=1.",
                &["http://example.com/a?b=1"],
                &["example.com"],
            ),
            (
                "(https://Shop.Example.ORG/x)",
                &["https://Shop.Example.ORG/x"],
                &["shop.example.org"],
            ),
            (
                "go to www.example.net now",
                &["http://www.example.net"],
                &["www.example.net"],
            ),
            ("mail me at bob@www.example.net", &[], &[]),
            (
                "hxxp://evil[.]example/payload",
                &["http://evil.example/payload"],
                &["evil.example"],
            ),
            (
                "http://evil(dot)example",
                &["http://evil.example"],
                &["evil.example"],
            ),
            (
                "http://user:pw@login.example:8080/x",
                &["http://user:pw@login.example:8080/x"],
                &["login.example"],
            ),
            (
                "http://3232235777/",
                &["http://3232235777/"],
                &["192.168.1.1"],
            ),
            (
                "http://%65vil.example/",
                &["http://%65vil.example/"],
                &["evil.example"],
            ),
            (
                "http://[2001:db8::1]/",
                &["http://[2001:db8::1]/"],
                &["2001:db8::1"],
            ),
            ("no links here", &[], &[]),
            ("http://", &[], &[]),
            (
                "a http://x.example b http://x.example",
                &["http://x.example"],
                &["x.example"],
            ),
        ];
        for (input, urls, hosts) in cases {
            let (u, h) = text_urls(input);
            assert_eq!(u, *urls, "{input}");
            assert_eq!(h, *hosts, "{input}");
        }
    }

    #[test]
    fn html_table() {
        let cases: &[(&str, &[&str])] = &[
            (r#"<a href="http://a.example/x">x</a>"#, &["a.example"]),
            (r#"<a HREF='//b.example/x'>x</a>"#, &["b.example"]),
            (r#"<a href=http://c.example/y>y</a>"#, &["c.example"]),
            (
                r#"<img src="&#104;ttp&#58;//d.example/i.png">"#,
                &["d.example"],
            ),
            (r#"<a href="http:\\e.example\p">p</a>"#, &["e.example"]),
            (r#"<form action="https://f.example/login">"#, &["f.example"]),
            (
                r#"<a href="mailto:x@g.example">m</a> text www.h.example"#,
                &["www.h.example"],
            ),
            (r#"<p data-href="http://i.example">"#, &["i.example"]),
        ];
        for (input, hosts) in cases {
            let (_, h) = html_urls(input);
            assert_eq!(h, *hosts, "{input}");
        }
    }

    #[test]
    fn limit_is_kept() {
        let text: String = (0..50).map(|i| format!("http://h{i}.example/ ")).collect();
        let mut sink = UrlSink::new(10);
        from_text(&text, &mut sink);
        assert_eq!(sink.urls.len(), 10);
    }

    #[test]
    fn many_repeated_urls_take_linear_time() {
        // 200,000 copies of one URL: one URL found, and no quadratic rescanning.
        let text = "http://same.example/ ".repeat(200_000);
        let started = std::time::Instant::now();
        let mut sink = UrlSink::new(1000);
        from_text(&text, &mut sink);
        from_html(&text, &mut sink);
        assert_eq!(sink.urls, ["http://same.example/"]);
        // Unterminated attribute values, many of them.
        let html = "<a href=\"x".repeat(100_000);
        from_html(&html, &mut sink);
        let html = "<a href=x".repeat(100_000);
        from_html(&html, &mut sink);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a&amp;b&#65;&#x42;&bogus;&"),
            "a&bAB&bogus;&"
        );
        // Multi-byte characters close after `&` must not split a char.
        assert_eq!(decode_entities("&nbsp; 萬事如意;"), "&nbsp; 萬事如意;");
        assert_eq!(decode_entities("&“51”"), "&“51”");
    }
}
