//! Bus fan-out: publishing a token through the turn fence and receiving it in
//! 1, 4 and 16 subscribers. Per event; no task scheduling is included (the
//! subscribers drain synchronously), so this is the bus's own cost.
//!
//! `cargo bench --bench bus`

use std::hint::black_box;
use std::sync::Arc;

use colloquy_actors::bus::{EventKind, SessionBus};
use colloquy_actors::{SessionId, TurnId};
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
            let mut turn = TurnId(0);
            b.iter(|| {
                turn = turn.next();
                bus.begin_turn(turn).unwrap();
                for _ in 0..EVENTS {
                    bus.publish(turn, EventKind::Token(token.clone())).unwrap();
                }
                for rx in &mut receivers {
                    let mut n = 0;
                    while let Ok(Some(ev)) = rx.try_recv() {
                        n += 1;
                        black_box(ev);
                    }
                    assert_eq!(n, EVENTS + 1);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
