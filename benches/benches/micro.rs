//! Micro-benchmarks of the per-record hot path: decode (protobuf, JSON), validation,
//! building + encoding the notification, CAFIS-style telegram encode/decode, and the
//! router's institution lookup with 100,000 institutions.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mpn_engine::domain::{ContentType, Event, decode_record};
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

fn cafis(c: &mut Criterion) {
    let notifications: Vec<_> = mpn_benches::sample_events(1_000)
        .iter()
        .map(|e| Event::validate(e).unwrap().to_notification(0, 7))
        .collect();
    let telegrams: Vec<Vec<u8>> = notifications
        .iter()
        .filter_map(|n| {
            mpn_engine::cafis::wire::notice(n, 8, "1", false)
                .ok()
                .flatten()
        })
        .collect();
    let mut g = c.benchmark_group("cafis");
    g.throughput(Throughput::Elements(notifications.len() as u64));
    g.bench_function("notification_to_telegram", |b| {
        b.iter(|| {
            notifications
                .iter()
                .filter_map(|n| mpn_engine::cafis::wire::notice(black_box(n), 8, "1", false).ok())
                .count()
        })
    });
    g.throughput(Throughput::Elements(telegrams.len() as u64));
    g.bench_function("telegram_decode", |b| {
        b.iter(|| {
            telegrams
                .iter()
                .filter(|t| mpn_cafis::decode(black_box(t)).is_ok())
                .count()
        })
    });
    g.finish();
}

/// The router finds an institution's session in a `DashMap<InstitutionCode, _>`.
fn router_lookup(c: &mut Criterion) {
    use mpn_engine::domain::InstitutionCode;
    let map: dashmap::DashMap<InstitutionCode, u64> = dashmap::DashMap::new();
    let codes: Vec<InstitutionCode> = (0..100_000u32)
        .map(|i| InstitutionCode::parse(&format!("{:08}", 10_000_000 + i * 7)).unwrap())
        .collect();
    for (i, c) in codes.iter().enumerate() {
        map.insert(*c, i as u64);
    }
    // A skewed access pattern like the traffic: every 7th lookup from a hot set.
    let probes: Vec<InstitutionCode> = (0..10_000usize)
        .map(|i| codes[(i * 7_919 + i * i) % codes.len()])
        .collect();
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("lookup_100k_institutions", |b| {
        b.iter(|| {
            probes
                .iter()
                .filter_map(|p| map.get(black_box(p)).map(|v| *v))
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group!(benches, hot_path, cafis, router_lookup);
criterion_main!(benches);
