//! Moat's content filter stage (work in progress).
