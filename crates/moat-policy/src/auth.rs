//! SPF, DKIM, DMARC and ARC verification and the `Authentication-Results` header.
