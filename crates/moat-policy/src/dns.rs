//! The DNS resolver every policy lookup shares (DNS block lists, SPF, DKIM, DMARC).
