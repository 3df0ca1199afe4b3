//! True file type from the first bytes, whatever the name or the declared type say.

/// A file type recognised by its magic bytes. Also the closed set of `type` labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrueType {
    /// ELF executable or shared object (`\x7fELF`).
    Elf,
    /// DOS/Windows executable (`MZ`): exe, dll, scr, cpl, sys.
    Pe,
    /// Mach-O executable (any of its four magics, or a fat binary).
    MachO,
    /// A script with an interpreter line (`#!`).
    Shebang,
    /// Windows shortcut (`.lnk`).
    Lnk,
    /// Microsoft Cabinet (`MSCF`).
    Cab,
    /// Zip archive (also docx, xlsx, jar, apk, odt).
    Zip,
    /// RAR archive.
    Rar,
    /// 7-Zip archive.
    SevenZip,
    /// gzip stream.
    Gzip,
    /// OLE2 compound file (doc, xls, msi).
    Ole2,
    /// PDF document.
    Pdf,
    /// PNG image.
    Png,
    /// JPEG image.
    Jpeg,
    /// GIF image.
    Gif,
}

impl TrueType {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TrueType::Elf => "elf",
            TrueType::Pe => "pe",
            TrueType::MachO => "mach-o",
            TrueType::Shebang => "script",
            TrueType::Lnk => "lnk",
            TrueType::Cab => "cab",
            TrueType::Zip => "zip",
            TrueType::Rar => "rar",
            TrueType::SevenZip => "7z",
            TrueType::Gzip => "gzip",
            TrueType::Ole2 => "ole2",
            TrueType::Pdf => "pdf",
            TrueType::Png => "png",
            TrueType::Jpeg => "jpeg",
            TrueType::Gif => "gif",
        }
    }

    /// Whether the bytes run as a program when opened.
    pub fn is_executable(self) -> bool {
        matches!(
            self,
            TrueType::Elf | TrueType::Pe | TrueType::MachO | TrueType::Shebang | TrueType::Lnk
        )
    }
}

/// Recognises `data` by its first bytes; `None` for anything else (text, unknown binary).
pub fn sniff(data: &[u8]) -> Option<TrueType> {
    const TABLE: &[(&[u8], TrueType)] = &[
        (b"\x7fELF", TrueType::Elf),
        (b"\xfe\xed\xfa\xce", TrueType::MachO),
        (b"\xfe\xed\xfa\xcf", TrueType::MachO),
        (b"\xce\xfa\xed\xfe", TrueType::MachO),
        (b"\xcf\xfa\xed\xfe", TrueType::MachO),
        (b"\x4c\x00\x00\x00\x01\x14\x02\x00", TrueType::Lnk),
        (b"MSCF\0\0\0\0", TrueType::Cab),
        (b"PK\x03\x04", TrueType::Zip),
        (b"PK\x05\x06", TrueType::Zip),
        (b"Rar!\x1a\x07", TrueType::Rar),
        (b"7z\xbc\xaf\x27\x1c", TrueType::SevenZip),
        (b"\x1f\x8b", TrueType::Gzip),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", TrueType::Ole2),
        (b"%PDF-", TrueType::Pdf),
        (b"\x89PNG\r\n\x1a\n", TrueType::Png),
        (b"\xff\xd8\xff", TrueType::Jpeg),
        (b"GIF87a", TrueType::Gif),
        (b"GIF89a", TrueType::Gif),
        (b"#!", TrueType::Shebang),
    ];
    if let Some((_, t)) = TABLE.iter().find(|(m, _)| data.starts_with(m)) {
        return Some(*t);
    }
    // "MZ" alone is two common letters; require the PE/NE/LE header pointer to be plausible
    // or a DOS stub long enough to be a program.
    if data.starts_with(b"MZ") && data.len() >= 64 {
        return Some(TrueType::Pe);
    }
    // Mach-O fat binary: CAFEBABE followed by a small architecture count (Java classes share
    // the magic but carry a version number above 40 there).
    if data.len() >= 8 && data.starts_with(b"\xca\xfe\xba\xbe") {
        let n = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        if (1..=20).contains(&n) {
            return Some(TrueType::MachO);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let mut mz = b"MZ".to_vec();
        mz.resize(128, 0);
        let cases: &[(&[u8], Option<TrueType>)] = &[
            (b"\x7fELF\x02\x01\x01", Some(TrueType::Elf)),
            (&mz, Some(TrueType::Pe)),
            (b"MZ is a postcode", None),
            (b"#!/bin/sh\n", Some(TrueType::Shebang)),
            (b"PK\x03\x04rest", Some(TrueType::Zip)),
            (b"%PDF-1.7", Some(TrueType::Pdf)),
            (b"\xca\xfe\xba\xbe\x00\x00\x00\x02", Some(TrueType::MachO)),
            (b"\xca\xfe\xba\xbe\x00\x00\x00\x34", None),
            (b"hello", None),
            (b"", None),
        ];
        for (data, want) in cases {
            assert_eq!(sniff(data), *want, "{data:?}");
        }
        assert!(TrueType::Pe.is_executable());
        assert!(!TrueType::Pdf.is_executable());
    }
}
