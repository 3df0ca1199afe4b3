//! Conversion of SpamAssassin rule files into a Moat pack.
