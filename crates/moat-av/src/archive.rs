//! Zip inspection within limits: entry names, encryption flags, declared and actual expanded
//! sizes, nested archives. Sans-IO over a byte slice; every offset is checked, so a malformed
//! or hostile archive gives a finding or nothing, never a panic.

use crate::magic::{self, TrueType};

/// Bounds on the work one attachment's archives may cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Deepest nesting of archives opened (1 = the attachment itself only).
    pub max_depth: usize,
    /// Most entries over all archives of one attachment.
    pub max_entries: usize,
    /// Most bytes the entries may expand to, declared or actual, over all archives.
    pub max_expanded: u64,
}

impl Default for ArchiveLimits {
    /// Depth 3, 1,000 entries, 100 MiB.
    fn default() -> Self {
        Self {
            max_depth: 3,
            max_entries: 1_000,
            max_expanded: 100 << 20,
        }
    }
}

/// Something found inside an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveFinding {
    /// An entry's file name (with its path), for the name rules.
    Entry {
        /// The name as stored (lossy UTF-8).
        name: String,
        /// The entry's true type when its bytes could be read.
        true_type: Option<TrueType>,
    },
    /// An encrypted entry.
    Encrypted(String),
    /// A limit was reached; the inspection stopped there.
    Limit(&'static str),
}

struct Walk<'l> {
    limits: &'l ArchiveLimits,
    entries: usize,
    expanded: u64,
    out: Vec<ArchiveFinding>,
}

/// Lists what a zip archive holds, opening nested zips up to the limits. Returns an empty list
/// when `data` is not a zip. A limit ends the walk with [`ArchiveFinding::Limit`] last.
pub fn inspect_zip(data: &[u8], limits: &ArchiveLimits) -> Vec<ArchiveFinding> {
    let mut w = Walk {
        limits,
        entries: 0,
        expanded: 0,
        out: Vec::new(),
    };
    let _ = w.zip(data, 1);
    w.out
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

/// Stop signal: a limit was hit (already recorded).
struct Stop;

impl Walk<'_> {
    fn limit(&mut self, what: &'static str) -> Result<(), Stop> {
        self.out.push(ArchiveFinding::Limit(what));
        Err(Stop)
    }

    fn zip(&mut self, d: &[u8], depth: usize) -> Result<(), Stop> {
        if depth > self.limits.max_depth {
            return self.limit("depth");
        }
        // End of central directory: the last "PK\5\6" within the final 64 KiB + 22 bytes.
        let from = d.len().saturating_sub(65_557);
        let Some(eocd) = (from..d.len().saturating_sub(21))
            .rev()
            .find(|&i| d[i..].starts_with(b"PK\x05\x06"))
        else {
            return Ok(());
        };
        let (Some(count), Some(cd_off)) = (u16_at(d, eocd + 10), u32_at(d, eocd + 16)) else {
            return Ok(());
        };
        let count = usize::from(count);
        let mut at = cd_off as usize;
        for _ in 0..count {
            if u32_at(d, at) != Some(0x0201_4b50) {
                break;
            }
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return self.limit("entries");
            }
            let (Some(flags), Some(method), Some(csize), Some(usize_), Some(nlen), Some(xlen)) = (
                u16_at(d, at + 8),
                u16_at(d, at + 10),
                u32_at(d, at + 20),
                u32_at(d, at + 24),
                u16_at(d, at + 28),
                u16_at(d, at + 30),
            ) else {
                break;
            };
            let (Some(clen), Some(local)) = (u16_at(d, at + 32), u32_at(d, at + 42)) else {
                break;
            };
            let name_start = at + 46;
            let Some(name) = d.get(name_start..name_start + usize::from(nlen)) else {
                break;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            at = name_start + usize::from(nlen) + usize::from(xlen) + usize::from(clen);

            // Zip64 markers mean sizes beyond 4 GiB: over any sane limit.
            if usize_ == u32::MAX || csize == u32::MAX {
                return self.limit("expanded-size");
            }
            self.expanded = self.expanded.saturating_add(u64::from(usize_));
            if self.expanded > self.limits.max_expanded {
                return self.limit("expanded-size");
            }
            if flags & 1 != 0 {
                self.out.push(ArchiveFinding::Encrypted(name.clone()));
                self.out.push(ArchiveFinding::Entry {
                    name,
                    true_type: None,
                });
                continue;
            }
            let bytes = self.entry_bytes(d, local as usize, csize as usize, method, usize_)?;
            let true_type = bytes.as_deref().and_then(magic::sniff);
            self.out.push(ArchiveFinding::Entry { name, true_type });
            if let (Some(TrueType::Zip), Some(inner)) = (true_type, bytes) {
                self.zip(&inner, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The entry's bytes (stored or deflated), bounded by the expanded-size budget; `None`
    /// when they cannot be had (other methods, broken offsets).
    fn entry_bytes(
        &mut self,
        d: &[u8],
        local: usize,
        csize: usize,
        method: u16,
        declared: u32,
    ) -> Result<Option<Vec<u8>>, Stop> {
        if u32_at(d, local) != Some(0x0403_4b50) {
            return Ok(None);
        }
        let (Some(nlen), Some(xlen)) = (u16_at(d, local + 26), u16_at(d, local + 28)) else {
            return Ok(None);
        };
        let start = local + 30 + usize::from(nlen) + usize::from(xlen);
        let Some(raw) = d.get(start..start.saturating_add(csize)) else {
            return Ok(None);
        };
        match method {
            0 => Ok(Some(raw.to_vec())),
            8 => {
                // Inflate no further than the budget left, whatever the header declared: a
                // lying header must not buy more expansion.
                let left = self
                    .limits
                    .max_expanded
                    .saturating_sub(self.expanded.saturating_sub(u64::from(declared)));
                let cap = usize::try_from(left).unwrap_or(usize::MAX);
                match miniz_oxide::inflate::decompress_to_vec_with_limit(raw, cap) {
                    Ok(v) => {
                        let actual = v.len() as u64;
                        if actual > u64::from(declared) {
                            self.expanded =
                                self.expanded.saturating_add(actual - u64::from(declared));
                        }
                        Ok(Some(v))
                    }
                    Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                        self.limit("expanded-size")?;
                        Ok(None)
                    }
                    Err(_) => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A zip of `(name, data, method, flags, declared_size)` entries; method 8 entries carry
    /// `data` as already-deflated bytes.
    pub(crate) fn zip(entries: &[(&str, &[u8], u16, u16, u32)]) -> Vec<u8> {
        let mut z = Vec::new();
        let mut cd = Vec::new();
        for (name, data, method, flags, usize_) in entries {
            let off = z.len() as u32;
            let crc = crc32(data);
            let head = |sig: u32, central: bool| {
                let mut h = sig.to_le_bytes().to_vec();
                if central {
                    h.extend_from_slice(&20u16.to_le_bytes());
                }
                h.extend_from_slice(&20u16.to_le_bytes());
                h.extend_from_slice(&flags.to_le_bytes());
                h.extend_from_slice(&method.to_le_bytes());
                h.extend_from_slice(&[0; 4]);
                h.extend_from_slice(&crc.to_le_bytes());
                h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                h.extend_from_slice(&usize_.to_le_bytes());
                h.extend_from_slice(&(name.len() as u16).to_le_bytes());
                h.extend_from_slice(&0u16.to_le_bytes());
                h
            };
            z.extend(head(0x0403_4b50, false));
            z.extend_from_slice(name.as_bytes());
            z.extend_from_slice(data);
            cd.extend(head(0x0201_4b50, true));
            cd.extend_from_slice(&[0; 10]);
            cd.extend_from_slice(&off.to_le_bytes());
            cd.extend_from_slice(name.as_bytes());
        }
        let cd_off = z.len() as u32;
        z.extend_from_slice(&cd);
        z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        z.extend_from_slice(&[0; 4]);
        let n = entries.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(cd.len() as u32).to_le_bytes());
        z.extend_from_slice(&cd_off.to_le_bytes());
        z.extend_from_slice(&0u16.to_le_bytes());
        z
    }

    pub(crate) fn stored(name: &str, data: &[u8]) -> Vec<u8> {
        zip(&[(name, data, 0, 0, data.len() as u32)])
    }

    fn names(f: &[ArchiveFinding]) -> Vec<String> {
        f.iter()
            .map(|x| match x {
                ArchiveFinding::Entry { name, .. } => name.clone(),
                ArchiveFinding::Encrypted(n) => format!("encrypted:{n}"),
                ArchiveFinding::Limit(l) => format!("limit:{l}"),
            })
            .collect()
    }

    #[test]
    fn nested_entries_and_types() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(100, 0);
        let inner = stored("run.pdf", &elf);
        let outer = stored("docs.zip", &inner);
        let f = inspect_zip(&outer, &ArchiveLimits::default());
        assert_eq!(names(&f), ["docs.zip", "run.pdf"]);
        assert_eq!(
            f[1],
            ArchiveFinding::Entry {
                name: "run.pdf".into(),
                true_type: Some(TrueType::Elf)
            }
        );
        let deep = stored(
            "c.zip",
            &stored("b.zip", &stored("a.zip", &stored("x", b"x"))),
        );
        let f = inspect_zip(&deep, &ArchiveLimits::default());
        assert_eq!(names(&f).last().unwrap(), "limit:depth");
    }

    #[test]
    fn limits_give_definite_findings() {
        // A declared bomb: small stored bytes claiming 10 GiB expanded.
        let bomb = zip(&[
            ("a.bin", b"tiny", 0, 0, u32::MAX - 1),
            ("b.bin", b"tiny", 0, 0, u32::MAX - 1),
        ]);
        let f = inspect_zip(&bomb, &ArchiveLimits::default());
        assert_eq!(names(&f).last().unwrap(), "limit:expanded-size");
        // A real deflate bomb: 1 MiB of zeros that claims 10 bytes.
        let zeros = vec![0u8; 1 << 20];
        let packed = miniz_oxide::deflate::compress_to_vec(&zeros, 9);
        let liar = zip(&[("z.bin", &packed, 8, 0, 10)]);
        let small = ArchiveLimits {
            max_expanded: 64 << 10,
            ..ArchiveLimits::default()
        };
        let f = inspect_zip(&liar, &small);
        assert_eq!(names(&f).last().unwrap(), "limit:expanded-size", "{f:?}");
        // Within limits the same entry inflates and is listed.
        let f = inspect_zip(&liar, &ArchiveLimits::default());
        assert_eq!(names(&f), ["z.bin"]);
        // Entries.
        let many: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("f{i}"), vec![])).collect();
        let refs: Vec<(&str, &[u8], u16, u16, u32)> = many
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice(), 0, 0, 0))
            .collect();
        let f = inspect_zip(
            &zip(&refs),
            &ArchiveLimits {
                max_entries: 5,
                ..ArchiveLimits::default()
            },
        );
        assert_eq!(names(&f).len(), 6);
        assert_eq!(names(&f).last().unwrap(), "limit:entries");
        // Encrypted.
        let enc = zip(&[("secret.doc", b"xxxx", 0, 1, 4)]);
        assert_eq!(
            names(&inspect_zip(&enc, &ArchiveLimits::default())),
            ["encrypted:secret.doc", "secret.doc"]
        );
    }

    #[test]
    fn garbage_never_panics() {
        let good = stored("a.txt", b"hello");
        // Every truncation and every single-byte corruption of a valid archive.
        for cut in 0..good.len() {
            let _ = inspect_zip(&good[..cut], &ArchiveLimits::default());
        }
        for i in 0..good.len() {
            for v in [0u8, 0xff, 0x7f] {
                let mut g = good.clone();
                g[i] = v;
                let _ = inspect_zip(&g, &ArchiveLimits::default());
            }
        }
        let _ = inspect_zip(b"PK\x05\x06", &ArchiveLimits::default());
    }
}
