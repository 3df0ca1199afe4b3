//! A [`crate::RateStore`] in Redis, shared by the nodes behind one MX, with a local fallback.
