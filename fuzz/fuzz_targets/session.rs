//! A whole SMTP session over an in-memory stream, fed arbitrary client bytes.
//! Invariant: no panic, no hang, and every `250 ... queued as` matches a stored message.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use moat_core::{Envelope, MessageStore, QueueId, SessionInfo, Shutdown, StoreFuture};
use moat_smtp::{Connector, Role, ServerContext, Session, SmtpMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Count(Mutex<usize>);

impl MessageStore for Count {
    fn store<'a>(&'a self, _: &'a SessionInfo, _: &'a Envelope, _: &'a [u8]) -> StoreFuture<'a> {
        Box::pin(async move {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            Ok(QueueId(format!("F{n}")))
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Arc::new(Count::default());
        let mut conn = Connector::new("mx", "127.0.0.1:25".parse().unwrap(), Role::Mx);
        conn.limits.command_timeout = Duration::from_millis(50);
        conn.limits.data_block_timeout = Duration::from_millis(50);
        conn.limits.max_message_size = 4096;
        let ctx = Arc::new(ServerContext {
            hostname: "mx.example.test".into(),
            accepted_domains: vec!["example.test".into()],
            store: store.clone(),
            stages: vec![],
        });
        let info = SessionInfo {
            connector: "mx".into(),
            client: "192.0.2.1:1".parse().unwrap(),
            local: "127.0.0.1:25".parse().unwrap(),
            helo: None,
            esmtp: false,
            tls: None,
            auth_user: None,
            may_relay: false,
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let metrics = SmtpMetrics::unregistered().connector("mx");
        let task = tokio::spawn(Session::new(server, Arc::new(conn), ctx, metrics, Shutdown::never(), info).run());
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut out))
            .await
            .expect("session hung");
        task.await.expect("session panicked");
        let queued = out.windows(14).filter(|w| w == b"Ok: queued as ").count();
        assert_eq!(queued, *store.0.lock().unwrap());
    });
});
