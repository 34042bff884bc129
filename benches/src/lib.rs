//! Benchmarks of mpn-notify. `cargo bench -p mpn-benches` runs the criterion
//! micro-benches in `benches/micro.rs`; this library holds their shared inputs.

use mpn_proto::mpn::v1 as pb;
use mpn_sim::traffic::{Generator, TrafficConfig};

/// A fixed, realistic set of valid events (seeded, so every run measures the same).
pub fn sample_events(n: usize) -> Vec<pb::PaymentEvent> {
    let mut g = Generator::new(TrafficConfig {
        invalid_ratio: 0.0,
        ..TrafficConfig::default()
    });
    (0..n).map(|_| g.next_record().event).collect()
}
