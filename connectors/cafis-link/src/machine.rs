//! The link's protocol, without sockets or clocks: which notice is on the wire, when
//! it is due again, what a host's answer means, and when the connection is dead.
//! The driver (`link.rs`) feeds it replies, notifications and the time, and carries
//! out its [`Action`]s; every transition is unit-tested here.
//!
//! Stop-and-wait: at most one notice is pending (written, or due to be written) at a
//! time, so per-institution order holds even when a notice is refused and retried.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mpn_delivery::{DeliveryToken, Outbound, Release};

use crate::config::Config;
use crate::wire::{self, Reply};

/// What the driver does next.
pub(crate) enum Action {
    /// Write the pending notice, if the ownership gate lets it: reserve its "may have
    /// sent" mark first, then call [`Link::written`].
    Send(Notice),
    /// Write this echo request (not a notification, so not gated).
    EchoRequest(Vec<u8>),
    /// Write this answer to the host's echo request (not gated either).
    EchoResponse(Vec<u8>),
    /// Finish a notification's delivery.
    Release(Box<dyn DeliveryToken>, Release),
    /// Dead-letter a notification the host can never take.
    DeadLetter {
        item: Outbound,
        kind: &'static str,
        field: String,
        message: String,
    },
}

/// The pending notice, as the driver writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notice {
    pub bytes: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

/// Why the connection must be dropped (the link reconnects; the pending notice is
/// resent on the next connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dead(pub String);

/// The notice on the wire (or due), waiting for its answer.
struct Pending {
    item: Outbound,
    bytes: Vec<u8>,
    sequence: u32,
    sent_at: Option<Instant>,
    first_sent: Option<Instant>,
    /// Set after a transient refusal: send again at this time.
    retry_at: Option<Instant>,
    sends: u32,
}

/// One link's protocol state: the pending notice survives reconnects; the echo state
/// is per connection.
pub(crate) struct Link {
    institution: String,
    /// The per-institution metric labels (empty without tenant labels).
    labels: Vec<(&'static str, String)>,
    partitions: usize,
    centre_id: String,
    ack_timeout: Duration,
    echo_interval: Duration,
    echo_timeout: Duration,
    retry_delay: Duration,
    pending: Option<Pending>,
    /// Whether the pending notice's [`Action::Send`] was handed out and not yet
    /// confirmed by [`Link::written`] (the gate may have refused it).
    sending: bool,
    /// Releases and dead letters: they finish notifications whatever becomes of the
    /// connection, so they are carried out even when it dies first
    /// ([`Link::take_settled`]).
    settled: VecDeque<Action>,
    /// Echo telegrams for the current connection (dropped with it).
    writes: VecDeque<Action>,
    last_heard: Instant,
    echo_sent: Option<(u32, Instant)>,
    echo_seq: u32,
    /// Connection failures since the host last answered (sets the back-off).
    pub(crate) failures: u32,
}

impl Link {
    pub(crate) fn new(institution: &str, partitions: usize, config: &Config, now: Instant) -> Self {
        Self {
            institution: institution.to_owned(),
            labels: mpn_delivery::labels::institution(institution),
            partitions,
            centre_id: config.centre_id.clone(),
            ack_timeout: config.ack_timeout,
            echo_interval: config.echo_interval,
            echo_timeout: config.echo_timeout,
            retry_delay: config.retry_delay,
            pending: None,
            sending: false,
            settled: VecDeque::new(),
            writes: VecDeque::new(),
            last_heard: now,
            echo_sent: None,
            echo_seq: 0,
            failures: 0,
        }
    }

    /// A new connection: echo checks start afresh, and the notice that was on the wire
    /// when the last one ended goes first (flagged as a resend).
    pub(crate) fn connected(&mut self, now: Instant) {
        self.last_heard = now;
        self.echo_sent = None;
        self.echo_seq = 0;
        self.sending = false;
        // Echoes of the last connection answer nothing on this one.
        self.writes.clear();
        if let Some(p) = self.pending.as_mut() {
            p.sent_at = None;
            p.retry_at = None;
        }
    }

    /// Whether a new notification may be taken (nothing is pending).
    pub(crate) fn can_take(&self) -> bool {
        self.pending.is_none()
    }

    /// A notification from the subscription. `resend`: it may have reached the host
    /// before (MPN's resend confirmation, or read back from Kafka below what an
    /// earlier attachment may have written).
    pub(crate) fn offer(&mut self, item: Outbound, resend: bool) {
        debug_assert!(
            self.pending.is_none(),
            "stop-and-wait: one notice at a time"
        );
        let sequence = wire::sequence_of(&item.notification, self.partitions);
        match wire::notice(&item.notification, self.partitions, &self.centre_id, resend) {
            // Daily counters have no telegram.
            Ok(None) => self
                .settled
                .push_back(Action::Release(item.token, Release::Acked)),
            Ok(Some(bytes)) => {
                self.pending = Some(Pending {
                    item,
                    bytes,
                    sequence,
                    sent_at: None,
                    first_sent: None,
                    retry_at: None,
                    sends: 0,
                });
            }
            // Nothing the host could be sent: dead-letter with the field.
            Err(e) => {
                let (field, message) = (e.field.clone(), e.to_string());
                self.settled.push_back(Action::DeadLetter {
                    item,
                    kind: "cafis_encode",
                    field,
                    message,
                });
            }
        }
    }

    /// The next thing to do now, if any.
    pub(crate) fn next_action(&mut self, now: Instant) -> Option<Action> {
        if let Some(a) = self.settled.pop_front().or_else(|| self.writes.pop_front()) {
            return Some(a);
        }
        let p = self.pending.as_mut()?;
        if self.sending || p.sent_at.is_some() || p.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        if p.sends > 0 {
            // A resend says so in its header.
            if let Ok(Some(b)) =
                wire::notice(&p.item.notification, self.partitions, &self.centre_id, true)
            {
                p.bytes = b;
            }
        }
        self.sending = true;
        Some(Action::Send(Notice {
            bytes: p.bytes.clone(),
            partition: p.item.notification.source_partition,
            offset: p.item.notification.source_offset,
        }))
    }

    /// The driver wrote the notice of the last [`Action::Send`].
    pub(crate) fn written(&mut self, now: Instant) {
        self.sending = false;
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.sends > 0 {
            metrics::counter!(crate::metrics::CAFIS_RESENDS_TOTAL, &self.labels).increment(1);
        }
        p.sent_at = Some(now);
        p.first_sent.get_or_insert(now);
        p.retry_at = None;
        p.sends += 1;
        metrics::counter!(crate::metrics::CAFIS_TELEGRAMS_SENT_TOTAL, &self.labels).increment(1);
    }

    /// The driver did not write it (the gate is closed): it is offered again on the
    /// next call (after the gate changes; a due retry stays due without a timer).
    pub(crate) fn not_written(&mut self) {
        self.sending = false;
        if let Some(p) = self.pending.as_mut() {
            p.retry_at = None;
        }
    }

    /// A whole telegram from the host.
    pub(crate) fn on_reply(&mut self, reply: Reply, now: Instant) -> Result<(), Dead> {
        // Only a whole telegram shows the host alive: one trickling bytes that never
        // make a telegram is still found dead by the echo.
        self.last_heard = now;
        let inst = &self.institution;
        let labels = &self.labels;
        match reply {
            Reply::EchoResponse { sequence } => {
                if self.echo_sent.is_some_and(|(s, _)| s == sequence) {
                    self.echo_sent = None;
                    self.failures = 0;
                }
            }
            Reply::EchoRequest(request) => {
                self.writes
                    .push_back(Action::EchoResponse(wire::echo_response(&request)));
            }
            Reply::Ack {
                sequence,
                transaction_key,
            } => {
                let Some(p) = self
                    .pending
                    .take_if(|p| p.matches(sequence, &transaction_key))
                else {
                    metrics::counter!(crate::metrics::CAFIS_STRAY_REPLIES_TOTAL, labels)
                        .increment(1);
                    return Ok(());
                };
                // The host answers: the next reconnect starts its back-off afresh.
                self.failures = 0;
                if let Some(t) = p.first_sent {
                    metrics::histogram!(crate::metrics::CAFIS_ACK_SECONDS, labels)
                        .record(now.saturating_duration_since(t).as_secs_f64());
                }
                metrics::counter!(crate::metrics::CAFIS_ACKS_TOTAL, labels).increment(1);
                self.settled
                    .push_back(Action::Release(p.item.token, Release::Acked));
            }
            Reply::Nack {
                sequence,
                transaction_key,
                code,
                permanent,
                text,
            } => {
                if !self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.matches(sequence, &transaction_key))
                {
                    metrics::counter!(crate::metrics::CAFIS_STRAY_REPLIES_TOTAL, labels)
                        .increment(1);
                    return Ok(());
                }
                metrics::counter!(
                    crate::metrics::CAFIS_NACKS_TOTAL,
                    &nack_labels(labels, &code, permanent)
                )
                .increment(1);
                if permanent {
                    let p = self.pending.take().expect("matched");
                    self.settled.push_back(Action::DeadLetter {
                        item: p.item,
                        kind: "cafis_nack",
                        message: format!("host refused the notice permanently: {code} {text}"),
                        field: code,
                    });
                } else if let Some(p) = self.pending.as_mut() {
                    tracing::info!(institution = %inst, %code, "CAFIS host refused a notice for now; retrying");
                    p.sent_at = None;
                    p.retry_at = Some(now + self.retry_delay);
                }
            }
            Reply::Unexpected(what) => {
                return Err(Dead(format!("unexpected telegram from host: {what}")));
            }
        }
        Ok(())
    }

    /// When [`Link::on_timer`] has something to do next.
    pub(crate) fn deadline(&self) -> Instant {
        let echo = match self.echo_sent {
            Some((_, at)) => at + self.echo_timeout,
            None => self.last_heard + self.echo_interval,
        };
        let pending = self
            .pending
            .as_ref()
            .and_then(|p| p.sent_at.map(|t| t + self.ack_timeout).or(p.retry_at));
        pending.map_or(echo, |p| p.min(echo))
    }

    /// The time has come for something: an unanswered notice or echo kills the
    /// connection; an idle connection is checked with an echo; a refused notice is
    /// due again (it comes out of [`Link::next_action`]).
    pub(crate) fn on_timer(&mut self, now: Instant) -> Result<(), Dead> {
        if let Some(sent) = self.pending.as_ref().and_then(|p| p.sent_at)
            && now >= sent + self.ack_timeout
        {
            return Err(Dead(format!(
                "no answer to a notice within {} ms",
                self.ack_timeout.as_millis()
            )));
        }
        match self.echo_sent {
            Some((_, at)) if now >= at + self.echo_timeout => Err(Dead(format!(
                "no answer to an echo within {} ms (dead peer)",
                self.echo_timeout.as_millis()
            ))),
            None if now >= self.last_heard + self.echo_interval => {
                self.echo_seq = self.echo_seq % mpn_cafis::MAX_SEQUENCE + 1;
                self.writes
                    .push_back(Action::EchoRequest(wire::echo_request(
                        &self.centre_id,
                        self.echo_seq,
                    )));
                self.echo_sent = Some((self.echo_seq, now));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The releases and dead letters not carried out yet: the driver carries them
    /// out when a connection ends, so a notice the host answered is finished even
    /// if the connection died right after the answer.
    pub(crate) fn take_settled(&mut self) -> Vec<Action> {
        self.settled.drain(..).collect()
    }

    /// The attachment ended (kicked, stopped): what was pending is handed back, and
    /// the next attachment reads it again from Kafka.
    pub(crate) fn take_pending(&mut self) -> Option<Outbound> {
        self.sending = false;
        self.pending.take().map(|p| p.item)
    }
}

impl Pending {
    fn matches(&self, sequence: u32, transaction_key: &str) -> bool {
        self.sequence == sequence && self.item.notification.transaction_key == transaction_key
    }
}

/// A refusal's labels: the institution's (if any), its code and whether it is final.
fn nack_labels(
    institution: &[(&'static str, String)],
    code: &str,
    permanent: bool,
) -> Vec<(&'static str, String)> {
    let mut l = institution.to_vec();
    l.push(("reason", code.to_owned()));
    l.push(("permanent", permanent.to_string()));
    l
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use mpn_proto::mpn::notify::v1 as pb;
    use mpn_proto::mpn::v1 as ev;

    use super::*;

    type Released = Arc<Mutex<Vec<(String, Release)>>>;

    struct Token(String, Released);
    impl DeliveryToken for Token {
        fn release(self: Box<Self>, how: Release) {
            self.1.lock().unwrap().push((self.0, how));
        }
    }

    const INST: &str = "20001000";

    fn config() -> Config {
        Config {
            ack_timeout: Duration::from_millis(1_000),
            echo_interval: Duration::from_millis(5_000),
            echo_timeout: Duration::from_millis(2_000),
            retry_delay: Duration::from_millis(300),
            ..Config::default()
        }
    }

    fn notification(offset: i64, kind: ev::EventKind) -> pb::Notification {
        pb::Notification {
            notification_id: format!("n{offset}"),
            institution_code: INST.into(),
            kind: kind as i32,
            transaction_key: format!("{INST:0>10}20260531{offset:08}"),
            customer_number: format!("{offset:010}"),
            confirmation_number: "1234".into(),
            amount: 1_000,
            bank_code: "0001".into(),
            branch_code: "123".into(),
            channel: ev::Channel::Atm as i32,
            collection_method: ev::CollectionMethod::Online as i32,
            paid_at: "2026-05-31T10:15:00+09:00".into(),
            fee_name: "水道料金".into(),
            payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
            source_partition: 0,
            source_offset: offset,
            ..Default::default()
        }
    }

    fn item(n: pb::Notification, released: &Released) -> Outbound {
        let token = Box::new(Token(n.notification_id.clone(), released.clone()));
        Outbound::new(n, token)
    }

    /// A link with one payment taken and written at `t0`.
    fn sent_one(t0: Instant) -> (Link, Released, pb::Notification) {
        let released = Released::default();
        let mut link = Link::new(INST, 1, &config(), t0);
        let n = notification(7, ev::EventKind::Payment);
        link.offer(item(n.clone(), &released), false);
        assert!(!link.can_take(), "one notice at a time");
        let Some(Action::Send(notice)) = link.next_action(t0) else {
            panic!("the notice is due at once")
        };
        assert_eq!((notice.partition, notice.offset), (0, 7));
        assert!(!resend_flag(&notice.bytes), "a first send is not a resend");
        assert!(link.next_action(t0).is_none(), "handed out once");
        link.written(t0);
        (link, released, n)
    }

    fn resend_flag(bytes: &[u8]) -> bool {
        let mut d = mpn_cafis::Deframer::default();
        d.push(bytes);
        let frame = d.next_frame().unwrap().expect("one whole telegram");
        mpn_cafis::decode(&frame).unwrap().header.resend
    }

    fn ack(n: &pb::Notification, partitions: usize) -> Reply {
        Reply::Ack {
            sequence: wire::sequence_of(n, partitions),
            transaction_key: n.transaction_key.clone(),
        }
    }

    fn nack(n: &pb::Notification, permanent: bool) -> Reply {
        Reply::Nack {
            sequence: wire::sequence_of(n, 1),
            transaction_key: n.transaction_key.clone(),
            code: "E1".into(),
            permanent,
            text: "refused".into(),
        }
    }

    fn releases(link: &mut Link, now: Instant) -> usize {
        let mut n = 0;
        while let Some(a) = link.next_action(now) {
            match a {
                Action::Release(t, how) => {
                    t.release(how);
                    n += 1;
                }
                _ => panic!("expected only releases"),
            }
        }
        n
    }

    #[test]
    fn an_ack_releases_the_notice_and_frees_the_link() {
        let t0 = Instant::now();
        let (mut link, released, n) = sent_one(t0);
        link.failures = 3;
        link.on_reply(ack(&n, 1), t0 + Duration::from_millis(10))
            .unwrap();
        assert_eq!(releases(&mut link, t0), 1);
        assert_eq!(*released.lock().unwrap(), [("n7".into(), Release::Acked)]);
        assert!(link.can_take());
        assert_eq!(link.failures, 0, "an answering host resets the back-off");
    }

    #[test]
    fn an_answer_to_another_notice_is_stray_and_changes_nothing() {
        let t0 = Instant::now();
        let (mut link, released, n) = sent_one(t0);
        let other = notification(8, ev::EventKind::Payment);
        link.on_reply(ack(&other, 1), t0).unwrap();
        link.on_reply(
            Reply::Ack {
                sequence: wire::sequence_of(&n, 1),
                transaction_key: other.transaction_key.clone(),
            },
            t0,
        )
        .unwrap();
        link.on_reply(nack(&other, true), t0).unwrap();
        assert!(link.next_action(t0).is_none());
        assert!(released.lock().unwrap().is_empty());
        assert!(!link.can_take(), "still waiting for its own answer");
    }

    #[test]
    fn a_transient_nack_retries_after_the_delay_flagged_as_a_resend() {
        let t0 = Instant::now();
        let (mut link, released, n) = sent_one(t0);
        link.on_reply(nack(&n, false), t0).unwrap();
        assert!(released.lock().unwrap().is_empty(), "not finished");
        assert_eq!(link.deadline(), t0 + Duration::from_millis(300));
        assert!(
            link.next_action(t0 + Duration::from_millis(299)).is_none(),
            "not before the retry delay"
        );
        let later = t0 + Duration::from_millis(300);
        link.on_timer(later).unwrap();
        let Some(Action::Send(again)) = link.next_action(later) else {
            panic!("due again")
        };
        assert!(resend_flag(&again.bytes), "a retry says it is a resend");
        link.written(later);
        link.on_reply(ack(&n, 1), later).unwrap();
        assert_eq!(releases(&mut link, later), 1);
        assert_eq!(*released.lock().unwrap(), [("n7".into(), Release::Acked)]);
    }

    #[test]
    fn a_permanent_nack_dead_letters_the_notice_with_the_code() {
        let t0 = Instant::now();
        let (mut link, _released, n) = sent_one(t0);
        link.on_reply(nack(&n, true), t0).unwrap();
        match link.next_action(t0) {
            Some(Action::DeadLetter {
                item,
                kind,
                field,
                message,
            }) => {
                assert_eq!(item.notification.notification_id, "n7");
                assert_eq!((kind, field.as_str()), ("cafis_nack", "E1"));
                assert!(message.contains("E1 refused"), "{message}");
            }
            _ => panic!("expected a dead letter"),
        }
        assert!(link.can_take(), "the next notice may go");
    }

    #[test]
    fn no_answer_within_the_ack_timeout_kills_the_connection() {
        let t0 = Instant::now();
        let (mut link, _released, _n) = sent_one(t0);
        assert_eq!(link.deadline(), t0 + Duration::from_millis(1_000));
        link.on_timer(t0 + Duration::from_millis(999)).unwrap();
        let dead = link
            .on_timer(t0 + Duration::from_millis(1_000))
            .unwrap_err();
        assert!(dead.0.contains("no answer to a notice"), "{}", dead.0);
    }

    #[test]
    fn an_idle_connection_is_echoed_and_dead_without_an_answer() {
        let t0 = Instant::now();
        let mut link = Link::new(INST, 1, &config(), t0);
        assert_eq!(link.deadline(), t0 + Duration::from_millis(5_000));
        let t1 = t0 + Duration::from_millis(5_000);
        link.on_timer(t1).unwrap();
        let Some(Action::EchoRequest(echo)) = link.next_action(t1) else {
            panic!("an echo request")
        };
        let mut d = mpn_cafis::Deframer::default();
        d.push(&echo);
        let t = mpn_cafis::decode(&d.next_frame().unwrap().unwrap()).unwrap();
        assert!(matches!(t.body, mpn_cafis::Body::EchoRequest));
        assert_eq!(t.header.sequence, 1);
        assert_eq!(link.deadline(), t1 + Duration::from_millis(2_000));
        let dead = link
            .on_timer(t1 + Duration::from_millis(2_000))
            .unwrap_err();
        assert!(dead.0.contains("dead peer"), "{}", dead.0);
    }

    #[test]
    fn an_echo_answer_keeps_the_connection_and_resets_the_back_off() {
        let t0 = Instant::now();
        let mut link = Link::new(INST, 1, &config(), t0);
        link.failures = 4;
        let t1 = t0 + Duration::from_millis(5_000);
        link.on_timer(t1).unwrap();
        assert!(matches!(link.next_action(t1), Some(Action::EchoRequest(_))));
        // An answer with another sequence is not the answer.
        link.on_reply(Reply::EchoResponse { sequence: 9 }, t1)
            .unwrap();
        assert_eq!(link.failures, 4);
        let t2 = t1 + Duration::from_millis(100);
        link.on_reply(Reply::EchoResponse { sequence: 1 }, t2)
            .unwrap();
        assert_eq!(link.failures, 0);
        assert_eq!(link.deadline(), t2 + Duration::from_millis(5_000));
        link.on_timer(t1 + Duration::from_millis(2_000)).unwrap();
    }

    #[test]
    fn a_host_echo_request_is_answered() {
        let t0 = Instant::now();
        let mut link = Link::new(INST, 1, &config(), t0);
        let request = mpn_cafis::decode(&{
            let mut d = mpn_cafis::Deframer::default();
            d.push(&wire::echo_request("9999", 42));
            d.next_frame().unwrap().unwrap()
        })
        .unwrap();
        link.on_reply(Reply::EchoRequest(request), t0).unwrap();
        let Some(Action::EchoResponse(answer)) = link.next_action(t0) else {
            panic!("an echo response")
        };
        let mut d = mpn_cafis::Deframer::default();
        d.push(&answer);
        let t = mpn_cafis::decode(&d.next_frame().unwrap().unwrap()).unwrap();
        assert!(matches!(t.body, mpn_cafis::Body::EchoResponse));
        assert_eq!(t.header.sequence, 42);
    }

    #[test]
    fn after_a_reconnect_the_unanswered_notice_goes_first_as_a_resend() {
        let t0 = Instant::now();
        let (mut link, released, n) = sent_one(t0);
        let t1 = t0 + Duration::from_millis(500);
        link.connected(t1);
        assert!(!link.can_take(), "no new notice before the unanswered one");
        let Some(Action::Send(again)) = link.next_action(t1) else {
            panic!("resent on the new connection")
        };
        assert_eq!(again.offset, 7);
        assert!(resend_flag(&again.bytes));
        link.written(t1);
        // The ack timeout runs from the resend, not the first send.
        assert_eq!(link.deadline(), t1 + Duration::from_millis(1_000));
        link.on_reply(ack(&n, 1), t1).unwrap();
        assert_eq!(releases(&mut link, t1), 1);
        assert_eq!(released.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_retry_the_gate_held_back_sets_no_timer() {
        let t0 = Instant::now();
        let (mut link, _released, n) = sent_one(t0);
        link.on_reply(nack(&n, false), t0).unwrap();
        let due = t0 + Duration::from_millis(300);
        assert!(matches!(link.next_action(due), Some(Action::Send(_))));
        link.not_written();
        // Waiting for the gate, not spinning on a retry time already past.
        assert_eq!(link.deadline(), t0 + Duration::from_millis(5_000));
        assert!(matches!(link.next_action(due), Some(Action::Send(_))));
    }

    #[test]
    fn a_notice_the_gate_held_back_is_offered_again_unchanged() {
        let t0 = Instant::now();
        let released = Released::default();
        let mut link = Link::new(INST, 1, &config(), t0);
        link.offer(
            item(notification(3, ev::EventKind::Payment), &released),
            false,
        );
        let Some(Action::Send(first)) = link.next_action(t0) else {
            panic!()
        };
        link.not_written();
        let Some(Action::Send(again)) = link.next_action(t0) else {
            panic!("offered again once the gate opens")
        };
        assert_eq!(first, again, "never written, so not a resend");
    }

    #[test]
    fn the_resend_flag_is_set_when_the_notice_may_have_reached_the_host() {
        let t0 = Instant::now();
        let released = Released::default();
        let mut link = Link::new(INST, 1, &config(), t0);
        link.offer(
            item(notification(5, ev::EventKind::Payment), &released),
            true,
        );
        let Some(Action::Send(notice)) = link.next_action(t0) else {
            panic!()
        };
        assert!(resend_flag(&notice.bytes));
    }

    #[test]
    fn daily_counters_finish_at_once_and_unencodable_notices_are_dead_lettered() {
        let t0 = Instant::now();
        let released = Released::default();
        let mut link = Link::new(INST, 1, &config(), t0);
        link.offer(
            item(notification(1, ev::EventKind::DailyCounters), &released),
            false,
        );
        assert_eq!(releases(&mut link, t0), 1);
        assert!(link.can_take());
        let mut bad = notification(2, ev::EventKind::Payment);
        bad.paid_at = "yesterday".into();
        link.offer(item(bad, &released), false);
        match link.next_action(t0) {
            Some(Action::DeadLetter { kind, field, .. }) => {
                assert_eq!((kind, field.as_str()), ("cafis_encode", "paid_at"));
            }
            _ => panic!("expected a dead letter"),
        }
        assert!(link.can_take());
    }

    #[test]
    fn an_answer_is_settled_even_when_the_connection_dies_right_after_it() {
        let t0 = Instant::now();
        let (mut link, released, n) = sent_one(t0);
        let request = mpn_cafis::decode(&{
            let mut d = mpn_cafis::Deframer::default();
            d.push(&wire::echo_request("9999", 1));
            d.next_frame().unwrap().unwrap()
        })
        .unwrap();
        // One read: an echo request, the ack, then garbage that kills the connection.
        link.on_reply(Reply::EchoRequest(request), t0).unwrap();
        link.on_reply(ack(&n, 1), t0).unwrap();
        assert!(link.on_reply(Reply::Unexpected("x".into()), t0).is_err());
        // The driver settles before anything else; nothing is pending any more.
        let settled = link.take_settled();
        assert_eq!(settled.len(), 1);
        for a in settled {
            let Action::Release(t, how) = a else {
                panic!("a release")
            };
            t.release(how);
        }
        assert_eq!(*released.lock().unwrap(), [("n7".into(), Release::Acked)]);
        assert!(link.take_pending().is_none());
        // The echo answer belonged to the dead connection.
        link.connected(t0);
        assert!(link.next_action(t0).is_none());
    }

    #[test]
    fn an_unexpected_telegram_kills_the_connection_and_a_kick_hands_back_the_notice() {
        let t0 = Instant::now();
        let (mut link, _released, _n) = sent_one(t0);
        let dead = link
            .on_reply(Reply::Unexpected("PaymentNotice".into()), t0)
            .unwrap_err();
        assert!(dead.0.contains("unexpected telegram"));
        let item = link.take_pending().expect("still pending");
        assert_eq!(item.notification.notification_id, "n7");
        assert!(link.can_take());
    }
}
