/// Errors of the content filter's library entry points.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rule packs could not be loaded, compiled or tested.
    #[error(transparent)]
    Rules(#[from] moat_rules::Error),
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
