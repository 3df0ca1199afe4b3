//! The attachment stage: rules by file name (extension, double extension, deceptive names),
//! declared MIME type, true type from magic bytes, and zip contents within limits; actions
//! reject, strip (remove the part, insert a notice, keep valid MIME) and silent delete.

use std::time::Instant;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use moat_core::{Enhanced, Envelope, Reply, SessionInfo, Stage, StageFuture, Verdict};

use crate::archive::{self, ArchiveFinding, ArchiveLimits};
use crate::error::{AvError, AvErrorKind};
use crate::magic::{self, TrueType};
use crate::metrics::AvMetrics;
use crate::printable;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttachmentAction {
    /// Remove the part and put a short text notice in its place; deliver the rest.
    Strip,
    /// Accept the message and drop it (logged and counted); the sender is not told.
    SilentDelete,
    /// `554 5.7.1`: refuse the message.
    Reject,
}

impl AttachmentAction {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentAction::Strip => "strip",
            AttachmentAction::SilentDelete => "silent-delete",
            AttachmentAction::Reject => "reject",
        }
    }
}

/// The attachment rules, a closed set (also the `rule` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachmentRule {
    /// The file name's extension is in the blocked list.
    Extension,
    /// A blocked extension hidden behind another one (`invoice.pdf.exe`).
    DoubleExtension,
    /// Bidirectional-text controls in the name (`invoice\u{202e}fdp.exe`).
    DeceptiveName,
    /// The declared `Content-Type` is in the blocked list.
    DeclaredType,
    /// The bytes are a program (ELF, PE, Mach-O, script, shortcut), whatever the name says.
    TrueType,
    /// An archive holds encrypted entries (its contents cannot be inspected or scanned).
    EncryptedArchive,
    /// An archive went over a depth, entry or expanded-size limit.
    ArchiveLimit,
}

impl AttachmentRule {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentRule::Extension => "extension",
            AttachmentRule::DoubleExtension => "double-extension",
            AttachmentRule::DeceptiveName => "deceptive-name",
            AttachmentRule::DeclaredType => "declared-type",
            AttachmentRule::TrueType => "true-type",
            AttachmentRule::EncryptedArchive => "encrypted-archive",
            AttachmentRule::ArchiveLimit => "archive-limit",
        }
    }

    pub(crate) const ALL: [AttachmentRule; 7] = [
        AttachmentRule::Extension,
        AttachmentRule::DoubleExtension,
        AttachmentRule::DeceptiveName,
        AttachmentRule::DeclaredType,
        AttachmentRule::TrueType,
        AttachmentRule::EncryptedArchive,
        AttachmentRule::ArchiveLimit,
    ];
}

/// Extensions blocked by default: things Windows, macOS or Linux run when opened.
pub const DEFAULT_BLOCKED_EXTENSIONS: &[&str] = &[
    "ade", "adp", "app", "appx", "bat", "cab", "chm", "cmd", "com", "cpl", "dll", "exe", "hta",
    "inf", "ins", "iso", "img", "jar", "js", "jse", "lnk", "msc", "msi", "msix", "msp", "mst",
    "pif", "ps1", "psm1", "reg", "scr", "sct", "sh", "shb", "sys", "url", "vb", "vbe", "vbs",
    "vhd", "vhdx", "ws", "wsc", "wsf", "wsh", "xll",
];

/// Declared types blocked by default.
pub const DEFAULT_BLOCKED_TYPES: &[&str] = &[
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-dosexec",
    "application/x-executable",
    "application/x-sharedlib",
    "application/x-mach-binary",
    "application/x-ms-shortcut",
    "application/hta",
    "application/x-sh",
    "application/x-bat",
];

/// The per-connector attachment policy. A rule whose action is `None` is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentPolicy {
    /// Lower-case extensions without the dot.
    pub blocked_extensions: Vec<String>,
    /// Lower-case `type/subtype` values.
    pub blocked_types: Vec<String>,
    /// Action of [`AttachmentRule::Extension`].
    pub on_extension: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::DoubleExtension`].
    pub on_double_extension: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::DeceptiveName`].
    pub on_deceptive_name: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::DeclaredType`].
    pub on_declared_type: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::TrueType`].
    pub on_true_type: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::EncryptedArchive`] (`None` lets encrypted archives pass).
    pub on_encrypted_archive: Option<AttachmentAction>,
    /// Action of [`AttachmentRule::ArchiveLimit`].
    pub on_archive_limit: Option<AttachmentAction>,
    /// Limits on archive inspection.
    pub archive: ArchiveLimits,
    /// Most leaf parts examined; a message with more is rejected (a definite verdict).
    pub max_parts: usize,
    /// Deepest nesting of attached messages walked; deeper is rejected.
    pub max_depth: usize,
}

impl Default for AttachmentPolicy {
    /// The default lists; name, type and true-type rules reject; encrypted archives and
    /// archive limits reject; 200 parts, depth 8.
    fn default() -> Self {
        Self {
            blocked_extensions: DEFAULT_BLOCKED_EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            blocked_types: DEFAULT_BLOCKED_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            on_extension: Some(AttachmentAction::Reject),
            on_double_extension: Some(AttachmentAction::Reject),
            on_deceptive_name: Some(AttachmentAction::Reject),
            on_declared_type: Some(AttachmentAction::Reject),
            on_true_type: Some(AttachmentAction::Reject),
            on_encrypted_archive: Some(AttachmentAction::Reject),
            on_archive_limit: Some(AttachmentAction::Reject),
            archive: ArchiveLimits::default(),
            max_parts: 200,
            max_depth: 8,
        }
    }
}

impl AttachmentPolicy {
    /// The action configured for a rule.
    pub fn action(&self, rule: AttachmentRule) -> Option<AttachmentAction> {
        match rule {
            AttachmentRule::Extension => self.on_extension,
            AttachmentRule::DoubleExtension => self.on_double_extension,
            AttachmentRule::DeceptiveName => self.on_deceptive_name,
            AttachmentRule::DeclaredType => self.on_declared_type,
            AttachmentRule::TrueType => self.on_true_type,
            AttachmentRule::EncryptedArchive => self.on_encrypted_archive,
            AttachmentRule::ArchiveLimit => self.on_archive_limit,
        }
    }
}

/// One rule that matched one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentFinding {
    /// Which rule.
    pub rule: AttachmentRule,
    /// What it does.
    pub action: AttachmentAction,
    /// Index of the top-level MIME part a strip removes (the attached message for a part
    /// inside one); `None` when the finding concerns the whole message.
    pub part: Option<usize>,
    /// The file name (printable ASCII, bounded), or empty.
    pub name: String,
    /// What matched, for the log (for example `pe inside docs.zip`).
    pub detail: String,
}

/// The result of [`AttachmentStage::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentReport {
    /// Every finding, in part order.
    pub findings: Vec<AttachmentFinding>,
    /// The action that applies to the message: the strongest of the findings' (a strip that
    /// cannot be done, because the part is the whole message, counts as reject).
    pub action: Option<AttachmentAction>,
    /// For [`AttachmentAction::Strip`]: the message with the parts replaced by notices.
    pub stripped: Option<Vec<u8>>,
}

/// The attachment stage. One per connector.
#[derive(Debug, Clone)]
pub struct AttachmentStage {
    policy: AttachmentPolicy,
    metrics: AvMetrics,
}

impl AttachmentStage {
    /// Checks the policy (lists lower-case, limits non-zero) and makes the stage.
    pub fn new(policy: AttachmentPolicy, metrics: AvMetrics) -> Result<Self, AvError> {
        let mut problems = Vec::new();
        for e in &policy.blocked_extensions {
            if e.is_empty() || e.starts_with('.') || e.chars().any(|c| c.is_uppercase()) {
                problems.push(format!(
                    "blocked extension {e:?} must be lower-case, without the dot"
                ));
            }
        }
        for t in &policy.blocked_types {
            if !t.contains('/') || t.chars().any(|c| c.is_uppercase()) {
                problems.push(format!(
                    "blocked type {t:?} must be a lower-case type/subtype"
                ));
            }
        }
        let a = &policy.archive;
        if policy.max_parts == 0 || a.max_depth == 0 || a.max_entries == 0 || a.max_expanded == 0 {
            problems.push("attachment limits must be greater than zero".into());
        }
        if !problems.is_empty() {
            return Err(AvError::new(AvErrorKind::Config, problems.join("; ")));
        }
        Ok(Self { policy, metrics })
    }

    /// The policy.
    pub fn policy(&self) -> &AttachmentPolicy {
        &self.policy
    }

    /// Applies the rules to one message. Sync and CPU-bound (no I/O).
    pub fn check(&self, message: &[u8]) -> AttachmentReport {
        let Some(parsed) = MessageParser::default().parse(message) else {
            return AttachmentReport {
                findings: Vec::new(),
                action: None,
                stripped: None,
            };
        };
        let mut w = Walker {
            policy: &self.policy,
            findings: Vec::new(),
            leaves: 0,
        };
        w.message(&parsed, 0, None);
        let mut findings = w.findings;
        // A strip of the root part (or of the whole message) cannot leave a message behind.
        for f in &mut findings {
            if f.action == AttachmentAction::Strip && f.part.is_none_or(|p| p == 0) {
                f.action = AttachmentAction::Reject;
            }
        }
        let action = findings.iter().map(|f| f.action).max();
        let stripped = (action == Some(AttachmentAction::Strip)).then(|| {
            let mut parts: Vec<(usize, &str)> = findings
                .iter()
                .filter_map(|f| Some((f.part?, f.rule.as_str())))
                .collect();
            parts.sort_unstable();
            parts.dedup_by_key(|p| p.0);
            strip_parts(message, &parsed, &parts)
        });
        AttachmentReport {
            findings,
            action,
            stripped,
        }
    }

    /// Maps a report to a verdict.
    ///
    /// Strip becomes [`Verdict::Replace`] with the stripped message (or, should stripping
    /// leave nothing to deliver, [`Verdict::Quarantine`]); silent delete becomes
    /// [`Verdict::Discard`].
    pub fn verdict(&self, report: &AttachmentReport) -> Verdict {
        let Some(action) = report.action else {
            return Verdict::Continue;
        };
        let rules: Vec<&str> = {
            let mut r: Vec<&str> = report
                .findings
                .iter()
                .filter(|f| f.action == action)
                .map(|f| f.rule.as_str())
                .collect();
            r.dedup();
            r
        };
        let rules = rules.join(", ");
        match action {
            AttachmentAction::Reject => Verdict::Reject(Reply::new(
                554,
                Enhanced::new(5, 7, 1),
                format!("Message rejected: attachment not allowed ({rules})"),
            )),
            AttachmentAction::SilentDelete => {
                Verdict::Discard(format!("attachment silent-delete: {rules}"))
            }
            AttachmentAction::Strip => match &report.stripped {
                Some(stripped) => {
                    Verdict::Replace(stripped.clone(), format!("attachment strip: {rules}"))
                }
                None => Verdict::Quarantine(format!("attachment strip: {rules}")),
            },
        }
    }
}

impl Stage for AttachmentStage {
    fn name(&self) -> &'static str {
        "attachments"
    }

    fn data<'a>(
        &'a self,
        session: &'a SessionInfo,
        _env: &'a Envelope,
        message: &'a [u8],
    ) -> StageFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let report = self.check(message);
            for f in &report.findings {
                self.metrics.attachment(f.rule, f.action);
                tracing::info!(
                    connector = %session.connector, client = %session.client_ip(),
                    rule = f.rule.as_str(), action = f.action.as_str(),
                    name = %f.name, detail = %f.detail, "attachment rule matched"
                );
            }
            tracing::trace!(elapsed = ?start.elapsed(), "attachment check");
            self.verdict(&report)
        })
    }
}

struct Walker<'p> {
    policy: &'p AttachmentPolicy,
    findings: Vec<AttachmentFinding>,
    leaves: usize,
}

impl Walker<'_> {
    fn add(
        &mut self,
        rule: AttachmentRule,
        part: Option<usize>,
        name: &str,
        detail: impl Into<String>,
    ) {
        if let Some(action) = self.policy.action(rule) {
            self.findings.push(AttachmentFinding {
                rule,
                action,
                part,
                name: printable(name, 120),
                detail: printable(&detail.into(), 200),
            });
        }
    }

    /// `top`: the top-level part this message hangs from (`None` for the message itself).
    fn message(&mut self, m: &Message<'_>, depth: usize, top: Option<usize>) {
        for (i, part) in m.parts.iter().enumerate() {
            let at = top.or(Some(i));
            let data: &[u8] = match &part.body {
                PartType::Multipart(_) => continue,
                PartType::Message(inner) => {
                    if depth + 1 > self.policy.max_depth {
                        self.add(
                            AttachmentRule::ArchiveLimit,
                            at,
                            "",
                            "attached messages nested too deep",
                        );
                    } else {
                        self.message(inner, depth + 1, at);
                    }
                    continue;
                }
                PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
                PartType::Binary(b) | PartType::InlineBinary(b) => b,
            };
            self.leaves += 1;
            if self.leaves > self.policy.max_parts {
                self.add(
                    AttachmentRule::ArchiveLimit,
                    None,
                    "",
                    "too many MIME parts",
                );
                return;
            }
            let name = part.attachment_name().unwrap_or("");
            if !name.is_empty() {
                self.name_rules(name, at, "");
            }
            if let Some(ct) = part.content_type() {
                let declared = match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                }
                .to_ascii_lowercase();
                if self.policy.blocked_types.contains(&declared) {
                    self.add(AttachmentRule::DeclaredType, at, name, declared);
                }
            }
            let binary = matches!(part.body, PartType::Binary(_) | PartType::InlineBinary(_));
            if !binary && name.is_empty() {
                continue; // message text: its first bytes are prose, not a file
            }
            match magic::sniff(data) {
                Some(t) if t.is_executable() => {
                    self.add(
                        AttachmentRule::TrueType,
                        at,
                        name,
                        format!("{} content", t.as_str()),
                    );
                }
                Some(TrueType::Zip) => self.archive(data, at, name),
                _ => {}
            }
        }
    }

    fn archive(&mut self, data: &[u8], at: Option<usize>, name: &str) {
        for f in archive::inspect_zip(data, &self.policy.archive) {
            match f {
                ArchiveFinding::Entry {
                    name: entry,
                    true_type,
                } => {
                    self.name_rules(&entry, at, name);
                    if let Some(t) = true_type.filter(|t| t.is_executable()) {
                        self.add(
                            AttachmentRule::TrueType,
                            at,
                            name,
                            format!("{} content in {entry} inside the archive", t.as_str()),
                        );
                    }
                }
                ArchiveFinding::Encrypted(entry) => self.add(
                    AttachmentRule::EncryptedArchive,
                    at,
                    name,
                    format!("encrypted entry {entry}"),
                ),
                ArchiveFinding::Limit(what) => self.add(
                    AttachmentRule::ArchiveLimit,
                    at,
                    name,
                    format!("archive {what} limit reached"),
                ),
            }
        }
    }

    /// Name rules; `container` names the archive the name was found in, if any.
    fn name_rules(&mut self, raw: &str, at: Option<usize>, container: &str) {
        let shown = if container.is_empty() {
            raw.to_string()
        } else {
            format!("{container}: {raw}")
        };
        if raw.chars().any(is_bidi_control) {
            self.add(
                AttachmentRule::DeceptiveName,
                at,
                &shown,
                "bidi control in name",
            );
        }
        let exts = extensions(raw);
        let Some(last) = exts.last() else {
            return;
        };
        if self.policy.blocked_extensions.iter().any(|b| b == last) {
            if exts.len() >= 2 {
                self.add(
                    AttachmentRule::DoubleExtension,
                    at,
                    &shown,
                    format!(".{}.{}", exts[exts.len() - 2], last),
                );
            } else {
                self.add(AttachmentRule::Extension, at, &shown, format!(".{last}"));
            }
        }
    }
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The lower-case extensions of a file name's last path component, as Windows would see
/// them: trailing dots and spaces dropped, bidi controls ignored. `a.PDF.exe` → `[pdf, exe]`;
/// a trailing run of extensions only (at most 3), each 1–10 alphanumeric characters.
pub fn extensions(name: &str) -> Vec<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base
        .chars()
        .filter(|c| !is_bidi_control(*c) && *c != '\0')
        .collect();
    let clean = clean.trim_end_matches(['.', ' ']).to_lowercase();
    let mut pieces: Vec<&str> = clean.split('.').collect();
    if pieces.len() < 2 {
        return Vec::new();
    }
    pieces.remove(0); // the stem
    let mut out: Vec<String> = Vec::new();
    for p in pieces.iter().rev() {
        let p = p.trim();
        if p.is_empty() || p.len() > 10 || !p.chars().all(char::is_alphanumeric) || out.len() == 3 {
            break;
        }
        out.push(p.to_string());
    }
    out.reverse();
    out
}

/// Replaces the given top-level parts with a text notice. Each part's bytes run from its
/// first header line to the end of its body; the boundary lines around it stay, so the
/// multipart structure stays valid.
pub(crate) fn strip_parts(
    message: &[u8],
    parsed: &Message<'_>,
    parts: &[(usize, &str)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut pos = 0usize;
    for &(i, rule) in parts {
        let Some(p) = parsed.parts.get(i) else {
            continue;
        };
        let (start, end) = (p.offset_header as usize, p.offset_end as usize);
        if start < pos || end < start || end > message.len() {
            continue;
        }
        let name = printable(p.attachment_name().unwrap_or("unnamed"), 120).replace('"', "'");
        out.extend_from_slice(&message[pos..start]);
        out.extend_from_slice(
            format!(
                "Content-Type: text/plain; charset=us-ascii\r\n\
                 Content-Disposition: inline\r\n\
                 Content-Transfer-Encoding: 7bit\r\n\r\n\
                 The attachment \"{name}\" was removed by the mail gateway ({rule}).\r\n"
            )
            .as_bytes(),
        );
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_table() {
        let cases: &[(&str, &[&str])] = &[
            ("invoice.pdf", &["pdf"]),
            ("invoice.PDF.exe", &["pdf", "exe"]),
            ("invoice.pdf.exe. . ", &["pdf", "exe"]),
            ("C:\\temp\\run.bat", &["bat"]),
            ("dir.d/noext", &[]),
            ("invoice.pdf      .exe", &["pdf", "exe"]),
            ("invoice\u{202e}fdp.exe", &["exe"]),
            ("archive.tar.gz", &["tar", "gz"]),
            ("a.b.c.d.e", &["c", "d", "e"]),
            ("", &[]),
            (".", &[]),
            ("report v1.2 final.docx", &["docx"]),
        ];
        for (name, want) in cases {
            assert_eq!(extensions(name), *want, "{name:?}");
        }
    }
}
