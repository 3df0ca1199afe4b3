//! Small helpers for envelope addresses and domains.

/// Lower-cases an address and strips angle brackets and a trailing dot of the domain.
pub(crate) fn normalize_address(addr: &str) -> String {
    let a = addr.trim();
    let a = a.strip_prefix('<').unwrap_or(a);
    let a = a.strip_suffix('>').unwrap_or(a);
    let a = a.strip_suffix('.').unwrap_or(a);
    a.to_ascii_lowercase()
}

/// Lower-cases a domain and strips a trailing dot.
pub(crate) fn normalize_domain(domain: &str) -> String {
    let d = domain.trim();
    d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
}

/// `(local, domain)` of a normalized address; `None` without an `@` or with an empty side.
pub(crate) fn split(addr: &str) -> Option<(&str, &str)> {
    let (local, domain) = addr.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

/// `domain` and each parent domain: `a.b.c` → `a.b.c`, `b.c`, `c`.
pub(crate) fn domain_and_parents(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| d.split_once('.').map(|(_, rest)| rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing() {
        let cases = [
            ("<Bob@Example.COM>", "bob@example.com"),
            (" bob@example.com. ", "bob@example.com"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_address(input), want);
        }
        assert_eq!(split("a@b"), Some(("a", "b")));
        assert_eq!(split("a@"), None);
        assert_eq!(split("postmaster"), None);
        let parents: Vec<_> = domain_and_parents("a.b.c").collect();
        assert_eq!(parents, ["a.b.c", "b.c", "c"]);
    }
}
