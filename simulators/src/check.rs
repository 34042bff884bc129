//! What one subscriber checks about what it received: order, duplicates and gaps.
//!
//! Fed every delivery in arrival order, [`DeliveryChecker`] keeps, per
//! (source partition, institution), the highest input offset among *first* deliveries:
//! a first delivery below it breaks the engine's order guarantee (per institution, in
//! input order; the input order of one institution is its partition's order). A
//! notification id seen before is a duplicate (at-least-once allows them; the report
//! counts them). Gaps are asked for at the end against the ids the publisher expects.
//!
//! Ids are kept as 64-bit hashes so a long run costs 8 bytes per distinct
//! notification per subscriber; two ids colliding among ten million has a
//! probability of about 3 in a million, and could only hide a gap, never invent one.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

/// One received notification, as far as the checks are concerned.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub notification_id: &'a str,
    pub institution: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

/// What a delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// First delivery of this id, in order.
    First,
    /// First delivery of this id, but below an offset already delivered for its
    /// partition and institution.
    OutOfOrder,
    /// The id was delivered before.
    Duplicate,
}

impl Outcome {
    /// A first delivery (in order or not): the one whose latency counts.
    pub fn is_first(self) -> bool {
        !matches!(self, Outcome::Duplicate)
    }
}

/// A first delivery that came after a later input offset of the same partition and
/// institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderViolation {
    pub notification_id: String,
    pub institution: String,
    pub partition: i32,
    pub offset: i64,
    /// The higher offset delivered before it.
    pub after_offset: i64,
}

/// How many order violations are kept as examples (all are counted).
pub const MAX_EXAMPLES: usize = 20;

/// Order, duplicate and gap checks of one subscriber's deliveries.
#[derive(Debug, Default)]
pub struct DeliveryChecker {
    seen: HashSet<u64>,
    last_offset: HashMap<(i32, String), i64>,
    deliveries: u64,
    duplicates: u64,
    order_violations: u64,
    examples: Vec<OrderViolation>,
}

fn id_hash(id: &str) -> u64 {
    // SipHash with fixed keys: the same id hashes the same in every run.
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl DeliveryChecker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one delivery and says what it was.
    pub fn observe(&mut self, d: Delivery<'_>) -> Outcome {
        self.deliveries += 1;
        if !self.seen.insert(id_hash(d.notification_id)) {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        let key = (d.source_partition, d.institution.to_owned());
        match self.last_offset.get_mut(&key) {
            Some(last) if d.source_offset < *last => {
                self.order_violations += 1;
                if self.examples.len() < MAX_EXAMPLES {
                    self.examples.push(OrderViolation {
                        notification_id: d.notification_id.to_owned(),
                        institution: d.institution.to_owned(),
                        partition: d.source_partition,
                        offset: d.source_offset,
                        after_offset: *last,
                    });
                }
                Outcome::OutOfOrder
            }
            Some(last) => {
                *last = d.source_offset;
                Outcome::First
            }
            None => {
                self.last_offset.insert(key, d.source_offset);
                Outcome::First
            }
        }
    }

    /// Whether `notification_id` was delivered at least once.
    pub fn has(&self, notification_id: &str) -> bool {
        self.seen.contains(&id_hash(notification_id))
    }

    /// Every delivery, duplicates included.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// Distinct notification ids delivered.
    pub fn distinct(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Deliveries of an id already delivered.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// First deliveries that came out of input order.
    pub fn order_violations(&self) -> u64 {
        self.order_violations
    }

    /// The first [`MAX_EXAMPLES`] order violations.
    pub fn order_violation_examples(&self) -> &[OrderViolation] {
        &self.examples
    }

    /// The ids of `expected` never delivered, in the order given (repeats once).
    pub fn gaps<'a>(&self, expected: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut reported = HashSet::new();
        expected
            .into_iter()
            .filter(|id| {
                let h = id_hash(id);
                !self.seen.contains(&h) && reported.insert(h)
            })
            .collect()
    }

    /// How many ids of `expected` were never delivered.
    pub fn gap_count<'a>(&self, expected: impl IntoIterator<Item = &'a str>) -> usize {
        self.gaps(expected).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d<'a>(id: &'a str, inst: &'a str, p: i32, o: i64) -> Delivery<'a> {
        Delivery {
            notification_id: id,
            institution: inst,
            source_partition: p,
            source_offset: o,
        }
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut c = DeliveryChecker::new();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(c.observe(d(id, "I1", 0, i as i64 * 2)), Outcome::First);
        }
        assert_eq!(c.deliveries(), 4);
        assert_eq!(c.distinct(), 4);
        assert_eq!(c.duplicates(), 0);
        assert_eq!(c.order_violations(), 0);
        assert!(c.gaps(["a", "b", "c", "d"]).is_empty());
    }

    #[test]
    fn order_is_per_partition_and_institution() {
        let mut c = DeliveryChecker::new();
        // Two institutions share partition 0; each is in order on its own.
        assert_eq!(c.observe(d("a1", "A", 0, 10)), Outcome::First);
        assert_eq!(c.observe(d("b1", "B", 0, 5)), Outcome::First);
        assert_eq!(c.observe(d("a2", "A", 0, 12)), Outcome::First);
        assert_eq!(c.observe(d("b2", "B", 0, 11)), Outcome::First);
        // Another partition of A starts low: allowed.
        assert_eq!(c.observe(d("a3", "A", 1, 0)), Outcome::First);
        assert_eq!(c.order_violations(), 0);
        // B goes back below 11 on partition 0: a violation.
        assert_eq!(c.observe(d("b0", "B", 0, 7)), Outcome::OutOfOrder);
        assert_eq!(c.order_violations(), 1);
        assert_eq!(
            c.order_violation_examples(),
            &[OrderViolation {
                notification_id: "b0".into(),
                institution: "B".into(),
                partition: 0,
                offset: 7,
                after_offset: 11,
            }]
        );
        // The violation does not lower the bar: the next in-order one is still fine.
        assert_eq!(c.observe(d("b3", "B", 0, 13)), Outcome::First);
        assert!(Outcome::OutOfOrder.is_first());
    }

    #[test]
    fn redelivery_after_reconnect_is_a_duplicate_not_a_violation() {
        let mut c = DeliveryChecker::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            c.observe(d(id, "I", 3, 100 + i as i64));
        }
        // Resumed from a cursor at "b": b and c again, then d.
        assert_eq!(c.observe(d("b", "I", 3, 101)), Outcome::Duplicate);
        assert_eq!(c.observe(d("c", "I", 3, 102)), Outcome::Duplicate);
        assert_eq!(c.observe(d("d", "I", 3, 103)), Outcome::First);
        assert_eq!(c.duplicates(), 2);
        assert_eq!(c.deliveries(), 6);
        assert_eq!(c.distinct(), 4);
        assert_eq!(c.order_violations(), 0);
        assert!(!Outcome::Duplicate.is_first());
    }

    #[test]
    fn gaps_are_the_expected_ids_never_delivered() {
        let mut c = DeliveryChecker::new();
        c.observe(d("k1:payment", "I", 0, 0));
        c.observe(d("k3:payment", "I", 0, 2));
        c.observe(d("unexpected", "I", 0, 3));
        let expected = ["k1:payment", "k2:payment", "k3:payment", "k4:cancellation"];
        assert_eq!(c.gaps(expected), vec!["k2:payment", "k4:cancellation"]);
        assert_eq!(c.gap_count(expected), 2);
        // An id expected twice (a resend of a payment) is one gap.
        assert_eq!(c.gap_count(["k2:payment", "k2:payment"]), 1);
        assert!(c.has("k1:payment") && !c.has("k2:payment"));
        assert!(c.gaps([]).is_empty());
    }

    #[test]
    fn examples_are_capped_but_all_violations_counted() {
        let mut c = DeliveryChecker::new();
        c.observe(d("top", "I", 0, 1_000));
        for i in 0..50 {
            assert_eq!(
                c.observe(d(&format!("x{i}"), "I", 0, i)),
                Outcome::OutOfOrder
            );
        }
        assert_eq!(c.order_violations(), 50);
        assert_eq!(c.order_violation_examples().len(), MAX_EXAMPLES);
    }
}
