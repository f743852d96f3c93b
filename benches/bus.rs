//! Bus fan-out: publishing an event through the turn ledger and receiving it in
//! 1, 4 and 16 subscribers. Per event; no task scheduling is included (the
//! subscribers drain synchronously), so this is the bus's own cost. Turn
//! control is the runtime's, so the events are interim transcripts (the same
//! lock, stamp and broadcast path a token takes).
//!
//! `cargo bench --bench bus`

use std::hint::black_box;
use std::sync::Arc;

use colloquy_actors::SessionId;
use colloquy_actors::bus::{EventKind, SessionBus};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 1000;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus_fanout");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let token: Arc<str> = Arc::from(" token");
    for subscribers in [1usize, 4, 16] {
        group.bench_function(format!("{subscribers}_subscribers"), |b| {
            let bus = SessionBus::new(SessionId::new("bench"), EVENTS + 8);
            let mut receivers: Vec<_> = (0..subscribers).map(|_| bus.subscribe()).collect();
            b.iter(|| {
                for _ in 0..EVENTS {
                    bus.publish_user(EventKind::UserTranscript {
                        text: token.clone(),
                        is_final: false,
                        heard: None,
                    })
                    .unwrap();
                }
                for rx in &mut receivers {
                    let mut n = 0;
                    while let Ok(Some(ev)) = rx.try_recv() {
                        n += 1;
                        black_box(ev);
                    }
                    assert_eq!(n, EVENTS);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
