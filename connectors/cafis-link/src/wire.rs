//! From notifications to telegrams and back: the engine's side of the `mpn-cafis`
//! codec (which does the byte work and checks every field).

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use mpn_cafis::{
    Body, Cancellation, Channel, CollectionMethod, Header, Notice, NoticeKind, Telegram,
};
use mpn_proto::mpn::notify::v1 as pb;
use mpn_proto::mpn::v1 as ev;

/// Content type of the payload of a dead-lettered CAFIS notice.
pub const NOTIFICATION_CONTENT_TYPE: &str =
    "application/x-protobuf; messageType=mpn.notify.v1.Notification";

/// A notification that cannot become a telegram; names the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Unsendable {
    pub field: String,
    pub message: String,
}

fn unsendable(field: &str, message: impl Into<String>) -> Unsendable {
    Unsendable {
        field: field.into(),
        message: message.into(),
    }
}

fn jst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("valid offset")
}

fn now_jst() -> NaiveDateTime {
    Utc::now().with_timezone(&jst()).naive_local()
}

/// The sequence of a notice, derived from its position in the input topic
/// (`offset × partitions + partition`, wrapped into 1..=99,999,999) so that every
/// replica, and every restart, sends a given notice with the same sequence, and two
/// notices never share one within 10^8 / partitions records of a partition.
pub fn sequence_of(n: &pb::Notification, partitions: usize) -> u32 {
    let position = n
        .source_offset
        .saturating_mul(partitions.max(1) as i64)
        .saturating_add(i64::from(n.source_partition));
    (position.rem_euclid(i64::from(mpn_cafis::MAX_SEQUENCE)) + 1) as u32
}

fn centre(centre_id: &str) -> String {
    format!("{centre_id:0>10}")
}

/// The notice telegram for `n`, or `Ok(None)` for notifications that have no
/// telegram (daily counters).
pub fn notice(
    n: &pb::Notification,
    partitions: usize,
    centre_id: &str,
    resend: bool,
) -> Result<Option<Vec<u8>>, Unsendable> {
    let kind = ev::EventKind::try_from(n.kind).unwrap_or(ev::EventKind::Unspecified);
    let (notice_kind, cancels) = match kind {
        ev::EventKind::Payment | ev::EventKind::ResendConfirmation | ev::EventKind::Confirmed => {
            (NoticeKind::Confirmed, false)
        }
        ev::EventKind::Preliminary => (NoticeKind::Preliminary, false),
        ev::EventKind::Cancellation => (NoticeKind::Confirmed, true),
        ev::EventKind::PreliminaryCancel => (NoticeKind::Preliminary, true),
        ev::EventKind::DailyCounters => return Ok(None),
        ev::EventKind::Unspecified => return Err(unsendable("kind", "unspecified")),
    };
    let channel = match ev::Channel::try_from(n.channel).unwrap_or(ev::Channel::Unspecified) {
        ev::Channel::Counter => Channel::Counter,
        ev::Channel::Atm => Channel::Atm,
        ev::Channel::InternetBanking => Channel::InternetBanking,
        ev::Channel::TelephoneBanking => Channel::TelephoneBanking,
        ev::Channel::Unspecified => return Err(unsendable("channel", "unspecified")),
    };
    let collection_method = match ev::CollectionMethod::try_from(n.collection_method)
        .unwrap_or(ev::CollectionMethod::Unspecified)
    {
        ev::CollectionMethod::InfoLink => CollectionMethod::InfoLink,
        ev::CollectionMethod::Batch => CollectionMethod::Batch,
        // Online is MPN's default collection method.
        ev::CollectionMethod::Online | ev::CollectionMethod::Unspecified => {
            CollectionMethod::Online
        }
    };
    let paid_at = DateTime::parse_from_rfc3339(&n.paid_at)
        .map_err(|e| unsendable("paid_at", format!("{e} (got {:?})", n.paid_at)))?
        .with_timezone(&jst())
        .naive_local();
    let body = Notice {
        institution_code: n.institution_code.clone(),
        transaction_key: n.transaction_key.clone(),
        kind: notice_kind,
        customer_number: n.customer_number.clone(),
        confirmation_number: n.confirmation_number.clone(),
        payment_class: n.payment_class.clone(),
        amount: n.amount,
        bank_code: n.bank_code.clone(),
        branch_code: n.branch_code.clone(),
        channel,
        collection_method,
        paid_at,
        fee_name: n.fee_name.clone(),
        payer_kana: n.payer_kana.clone(),
    };
    let body = if cancels {
        Body::CancellationNotice(Box::new(Cancellation {
            notice: body,
            original_transaction_key: n.original_transaction_key.clone(),
        }))
    } else {
        Body::PaymentNotice(Box::new(body))
    };
    let t = Telegram {
        header: Header {
            sequence: sequence_of(n, partitions),
            resend,
            centre_id: centre(centre_id),
            sent_at: now_jst(),
        },
        body,
    };
    mpn_cafis::encode(&t).map(Some).map_err(|e| match e {
        mpn_cafis::EncodeError::Field { field, .. } => unsendable(field, e.to_string()),
        mpn_cafis::EncodeError::Kana(k) => unsendable("payer_kana", k.to_string()),
    })
}

pub fn echo_request(centre_id: &str, sequence: u32) -> Vec<u8> {
    let t = Telegram {
        header: Header {
            sequence,
            resend: false,
            centre_id: centre(centre_id),
            sent_at: now_jst(),
        },
        body: Body::EchoRequest,
    };
    mpn_cafis::encode(&t).expect("an echo always encodes")
}

/// What a host sent us.
#[derive(Debug)]
pub enum Reply {
    Ack {
        sequence: u32,
        transaction_key: String,
    },
    Nack {
        sequence: u32,
        transaction_key: String,
        code: String,
        permanent: bool,
        text: String,
    },
    EchoRequest(Telegram),
    EchoResponse {
        sequence: u32,
    },
    Unexpected(String),
}

/// Frames and decodes what a host sends.
#[derive(Debug, Default)]
pub struct Reader(mpn_cafis::Deframer);

impl Reader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.push(bytes);
    }

    /// The next complete reply; an error means the byte stream cannot be trusted any
    /// more (the link reconnects).
    pub fn next_reply(&mut self) -> Option<Result<Reply, String>> {
        let frame = match self.0.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => return Some(Err(e.to_string())),
        };
        let t = match mpn_cafis::decode(&frame) {
            Ok(t) => t,
            Err(e) => return Some(Err(e.to_string())),
        };
        let sequence = t.header.sequence;
        Some(Ok(match t.body {
            Body::Ack(a) => Reply::Ack {
                sequence,
                transaction_key: a.transaction_key,
            },
            Body::Nack(n) => Reply::Nack {
                sequence,
                transaction_key: n.transaction_key,
                code: n.reason.code().to_owned(),
                permanent: n.reason.is_permanent(),
                text: n.detail,
            },
            Body::EchoRequest => Reply::EchoRequest(t),
            Body::EchoResponse => Reply::EchoResponse { sequence },
            other => Reply::Unexpected(format!("{:?} from a host", std::mem::discriminant(&other))),
        }))
    }
}

/// The answer to a host's echo request.
pub fn echo_response(request: &Telegram) -> Vec<u8> {
    let t = request.echo_response(now_jst()).expect("an echo request");
    mpn_cafis::encode(&t).expect("an echo always encodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> pb::Notification {
        pb::Notification {
            source_partition: partition,
            source_offset: offset,
            ..Default::default()
        }
    }

    #[test]
    fn sequences_wrap_into_the_eight_digits() {
        let max = i64::from(mpn_cafis::MAX_SEQUENCE);
        // 12 partitions: position = offset * 12 + partition.
        let last = (max - 1 - 5) / 12;
        assert_eq!(
            sequence_of(&at(5, last), 12),
            ((last * 12 + 5) % max + 1) as u32
        );
        let s = sequence_of(&at(5, last), 12);
        let wrapped = sequence_of(&at(5, last + 1), 12);
        assert!(s > 99_999_900, "{s}");
        assert!(wrapped < 100, "{wrapped}: wrapped to the bottom");
        assert!((1..=mpn_cafis::MAX_SEQUENCE).contains(&wrapped));
        assert_eq!(sequence_of(&at(0, 0), 12), 1);
    }
}
