//! STARTTLS and AUTH transcripts over an in-memory stream with a real rustls client.
#![allow(missing_docs)]

mod common;

use std::sync::Arc;

use common::*;
use moat_core::Shutdown;
use moat_smtp::auth::{Users, hash_password};
use moat_smtp::{Connector, Role, tls};
use rustls::pki_types::ServerName;

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: tokio_rustls::TlsConnector,
}

fn pki() -> Pki {
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("moat-tls-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let server = tls::load(&c, &k).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Pki {
        server,
        client: tokio_rustls::TlsConnector::from(Arc::new(config)),
    }
}

fn submission(pki: &Pki) -> Connector {
    let mut conn = Connector::new(
        "submission",
        "127.0.0.1:587".parse().unwrap(),
        Role::Submission,
    );
    conn.tls = Some(pki.server.clone());
    let hash = hash_password("s3cret").unwrap();
    conn.users = Users::parse(&format!("alice:{hash}\n"), "users").unwrap();
    conn
}

async fn upgrade(
    pki: &Pki,
    mut c: Client<tokio::io::DuplexStream>,
) -> Client<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>> {
    transcript(
        &mut c,
        "S: 220
         C: EHLO c
         S: 250
         C: STARTTLS
         S: 220 2.0.0",
    )
    .await;
    let name = ServerName::try_from("mx.example.test").unwrap();
    let tls = pki.client.connect(name, c.into_inner()).await.unwrap();
    Client::new(tls)
}

#[tokio::test]
async fn starttls_then_auth_plain_allows_relay() {
    let pki = pki();
    let store = Arc::new(MemoryStore::default());
    let c = start(
        submission(&pki),
        context(store.clone()),
        "192.0.2.10",
        Shutdown::never(),
    );
    let mut t = upgrade(&pki, c).await;
    t.send("EHLO c\r\n").await;
    let ehlo = t.expect("250 ").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    transcript(
        &mut t,
        // \0alice\0wrong, then \0alice\0s3cret
        "C: MAIL FROM:<alice@example.test>
         S: 530 5.7.0
         C: AUTH PLAIN AGFsaWNlAHdyb25n
         S: 535 5.7.8
         C: AUTH PLAIN AGFsaWNlAHMzY3JldA==
         S: 235 2.7.0
         C: AUTH PLAIN AGFsaWNlAHMzY3JldA==
         S: 503 5.5.1
         C: MAIL FROM:<alice@example.test>
         S: 250
         C: RCPT TO:<friend@elsewhere.test>
         S: 250 2.1.5
         C: DATA
         S: 354
         C: Subject: via tls
         C:
         C: hi
         C: .
         S: 250 2.0.0",
    )
    .await;
    let (_, msg) = store.last();
    let text = String::from_utf8(msg).unwrap();
    assert!(text.contains("with ESMTPSA"), "{text}");
    assert!(text.contains("(using TLSv1.3 with cipher TLS13_"), "{text}");
}

#[tokio::test]
async fn auth_login_and_cancel() {
    let pki = pki();
    let store = Arc::new(MemoryStore::default());
    let c = start(
        submission(&pki),
        context(store),
        "192.0.2.10",
        Shutdown::never(),
    );
    let mut t = upgrade(&pki, c).await;
    transcript(
        &mut t,
        // VXNlcm5hbWU6 = Username:, UGFzc3dvcmQ6 = Password:
        "C: EHLO c
         S: 250
         C: AUTH LOGIN
         S: 334 VXNlcm5hbWU6
         C: *
         S: 501 5.0.0
         C: AUTH CRAM-MD5
         S: 504 5.5.4
         C: AUTH LOGIN
         S: 334 VXNlcm5hbWU6
         C: YWxpY2U=
         S: 334 UGFzc3dvcmQ6
         C: czNjcmV0
         S: 235 2.7.0",
    )
    .await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let pki = pki();
    let store = Arc::new(MemoryStore::default());
    let mut c = start(
        submission(&pki),
        context(store),
        "192.0.2.10",
        Shutdown::never(),
    );
    c.expect("220").await;
    c.send("EHLO c\r\n").await;
    c.expect("250 ").await;
    // The injected command must not be answered inside the TLS session.
    c.send("STARTTLS\r\nNOOP\r\n").await;
    c.expect("220 2.0.0").await;
    let name = ServerName::try_from("mx.example.test").unwrap();
    let tls = pki.client.connect(name, c.into_inner()).await;
    // Either the handshake fails (the server saw garbage) or the session is clean.
    if let Ok(tls) = tls {
        let mut t = Client::new(tls);
        t.send("EHLO c\r\n").await;
        t.expect("250 ").await;
    }
}

#[tokio::test]
async fn mx_requiring_tls_refuses_mail_in_clear() {
    let pki = pki();
    let store = Arc::new(MemoryStore::default());
    let mut conn = moat_smtp::Connector::new("mx", "127.0.0.1:25".parse().unwrap(), Role::Mx);
    conn.tls = Some(pki.server.clone());
    conn.require_tls = true;
    let mut c = start(conn, context(store), "192.0.2.10", Shutdown::never());
    c.expect("220").await;
    c.send("EHLO c\r\n").await;
    let ehlo = c.expect("250 ").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    transcript(&mut c, "C: MAIL FROM:<a@sender.test>\nS: 530 5.7.0").await;
}
