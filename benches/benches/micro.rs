//! Micro-benchmarks of the per-record hot path: decode (protobuf, JSON), validation
//! and building + encoding the notification.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mpn_notify::domain::{ContentType, Event, decode_record};
use prost::Message;
use std::hint::black_box;

fn hot_path(c: &mut Criterion) {
    let events = mpn_benches::sample_events(1_000);
    let proto: Vec<Vec<u8>> = events.iter().map(|e| e.encode_to_vec()).collect();
    let json: Vec<Vec<u8>> = events.iter().map(mpn_proto::json::encode).collect();
    let validated: Vec<Event> = events.iter().map(|e| Event::validate(e).unwrap()).collect();

    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decode_protobuf", |b| {
        b.iter(|| {
            proto
                .iter()
                .filter(|p| decode_record(ContentType::Protobuf, black_box(p)).is_ok())
                .count()
        })
    });
    g.bench_function("decode_json", |b| {
        b.iter(|| {
            json.iter()
                .filter(|p| decode_record(ContentType::Json, black_box(p)).is_ok())
                .count()
        })
    });
    g.bench_function("validate", |b| {
        b.iter(|| {
            events
                .iter()
                .filter(|e| Event::validate(black_box(e)).is_ok())
                .count()
        })
    });
    g.bench_function("notification_encode", |b| {
        b.iter(|| {
            validated
                .iter()
                .map(|e| e.to_notification(0, 0).encoded_len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
