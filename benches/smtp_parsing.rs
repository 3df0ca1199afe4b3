//! The SMTP front end's CPU paths: DATA reception (terminator search, dot-unstuffing, line
//! checks) and command parsing.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moat_smtp::data::{DataReader, Progress};

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n".to_vec();
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
        if m.len().is_multiple_of(7) {
            m.extend_from_slice(b"..stuffed line\r\n");
        }
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn data_reader(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_reader");
    for size in [4 * 1024, 100 * 1024, 1024 * 1024] {
        let msg = message(size);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &msg, |b, msg| {
            let mut out = Vec::with_capacity(msg.len());
            b.iter(|| {
                out.clear();
                let mut r = DataReader::new(1000, 64 << 20);
                // 16 KiB reads, as the session does.
                for chunk in msg.chunks(16 * 1024) {
                    if let Progress::Done { .. } = r.feed(chunk, &mut out) {
                        break;
                    }
                }
                out.len()
            });
        });
    }
    g.finish();
}

fn commands(c: &mut Criterion) {
    let lines: &[&[u8]] = &[
        b"EHLO client.example.test\r\n",
        b"MAIL FROM:<sender@example.test> SIZE=4096 BODY=8BITMIME\r\n",
        b"RCPT TO:<recipient@example.test>\r\n",
        b"DATA\r\n",
    ];
    let total: usize = lines.iter().map(|l| l.len()).sum();
    let mut g = c.benchmark_group("commands");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("transaction", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter(|l| smtp_proto::Request::parse(&mut l.iter()).is_ok())
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, data_reader, commands);
criterion_main!(benches);
