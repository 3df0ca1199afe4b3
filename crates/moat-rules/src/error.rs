use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a rule pack: the file, the line when known, the rule when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The pack or list file the problem is in.
    pub file: PathBuf,
    /// 1-based line in `file`, when the problem can be placed.
    pub line: Option<usize>,
    /// The rule (or pack test) the problem belongs to.
    pub rule: Option<String>,
    /// What is wrong, lower-case.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            rule: None,
            message: message.into(),
        }
    }

    pub(crate) fn at(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    pub(crate) fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The step of `load → validate → compile → test` that refused a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reading or parsing the files.
    Load,
    /// Checking fields, references and uniqueness.
    Validate,
    /// Building regexes and automata.
    Compile,
    /// Running the packs' own test cases.
    Test,
}

impl Step {
    /// Lower-case name, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Load => "load",
            Step::Validate => "validate",
            Step::Compile => "compile",
            Step::Test => "test",
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {p}"))
        .collect::<String>()
}

/// Everything that can go wrong in this crate.
///
/// A refused rule set is always the operator's fault and never helped by retrying unchanged;
/// [`Error::Io`] on the rules folder may be transient.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The rule set was refused; every problem found is listed.
    #[error("rule packs refused at {} ({} problem(s)):{}", step.as_str(), problems.len(), list(problems))]
    Refused {
        /// Which step refused it.
        step: Step,
        /// All problems found in that step.
        problems: Vec<Problem>,
    },
    /// The file watcher could not be set up.
    #[error("cannot watch the rules folder: {0}")]
    Watch(#[from] notify::Error),
}

impl Error {
    pub(crate) fn refused(step: Step, problems: Vec<Problem>) -> Self {
        Error::Refused { step, problems }
    }

    /// The problems behind a refusal (empty for I/O and watcher errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Refused { problems, .. } => problems,
            _ => &[],
        }
    }

    /// Whether trying again without changing the files may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::Watch(_))
    }
}
