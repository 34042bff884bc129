//! The engine's transport-neutral answers in gRPC terms: a refused call or an ended
//! subscription as a `tonic::Status`, and a `SubscribeRequest` as an attach request.
//! The only place where the delivery contract meets gRPC codes.

use mpn_delivery::{AttachRequest, BackendError, EndReason, StartFrom};
use mpn_proto::mpn::notify::v1 as pb;
use tonic::Status;

/// The status a refused call ends with.
pub(crate) fn refused(e: BackendError) -> Status {
    match e {
        BackendError::Unauthenticated(m) => Status::unauthenticated(m),
        // RESOURCE_EXHAUSTED with a retry delay: clients back off instead of
        // retrying a login that will be refused anyway.
        BackendError::LockedOut {
            message,
            retry_after,
        } => {
            use tonic_types::{ErrorDetails, StatusExt};
            let mut details = ErrorDetails::with_retry_info(Some(retry_after));
            details.set_error_info(
                "LOGIN_LOCKED_OUT",
                "mpn-notify",
                std::collections::HashMap::<String, String>::new(),
            );
            Status::with_error_details(tonic::Code::ResourceExhausted, message, details)
        }
        BackendError::PermissionDenied(m) => Status::permission_denied(m),
        BackendError::InvalidArgument(m) => Status::invalid_argument(m),
        BackendError::Unavailable(m) => Status::unavailable(m),
        BackendError::FailedPrecondition(m) => Status::failed_precondition(m),
        BackendError::ResourceExhausted(m) => Status::resource_exhausted(m),
        BackendError::OutOfRange { message, earliest } => {
            use tonic_types::{ErrorDetails, StatusExt};
            let metadata = earliest
                .iter()
                .map(|(p, o)| (format!("partition-{p}"), o.to_string()))
                .collect::<std::collections::HashMap<_, _>>();
            let details =
                ErrorDetails::with_error_info("CURSOR_OUT_OF_RANGE", "mpn-notify", metadata);
            Status::with_error_details(tonic::Code::OutOfRange, message, details)
        }
    }
}

/// The status a stream ends with when the engine ended its subscription: the code
/// says whether to retry, the message what to do.
pub(crate) fn ended(reason: &EndReason) -> Status {
    match reason {
        EndReason::PartitionsMoved => Status::unavailable(
            "partitions moved between engine replicas; reconnect to resume from your cursor",
        ),
        EndReason::Replaced => {
            Status::aborted("replaced by a newer connection of the same subscriber_id")
        }
        EndReason::TooSlow => Status::resource_exhausted(
            "subscriber too slow: its queue is full; reconnect (with a subscriber_id to resume where you left off)",
        ),
        EndReason::SourceUnavailable => {
            Status::unavailable("cannot read Kafka for this subscription; reconnect")
        }
        EndReason::CredentialRemoved => {
            Status::unauthenticated("the subscription's credential was removed")
        }
        EndReason::GrantsRevoked(lost) => Status::permission_denied(format!(
            "the credential no longer grants institutions {}",
            lost.join(", ")
        )),
        // The broker's text stays in the engine's log (the reader logs it).
        EndReason::PositionExpired(_) => Status::out_of_range(
            "the subscription's position is older than the input topic's retention; \
             resubscribe with START_FROM_EARLIEST or START_FROM_TIME",
        ),
    }
}

/// The attach request a `subscribe` message asks for.
pub(crate) fn attach_request(
    req: &pb::SubscribeRequest,
    remote_addr: Option<std::net::SocketAddr>,
) -> AttachRequest {
    let start_from = match pb::StartFrom::try_from(req.start_from) {
        Ok(pb::StartFrom::Cursor) => StartFrom::Cursor,
        Ok(pb::StartFrom::Now) => StartFrom::Now,
        Ok(pb::StartFrom::Earliest) => StartFrom::Earliest,
        Ok(pb::StartFrom::Time) => StartFrom::Time(req.start_time_ms),
        // Refused by the engine, in the same order as every other check.
        Err(_) => StartFrom::Unknown(req.start_from),
    };
    AttachRequest {
        institutions: req.institutions.clone(),
        // Client-chosen: bounded and escaped before anything keeps or logs it.
        subscriber_name: mpn_delivery::display_name(&req.subscriber_name),
        subscriber_id: req.subscriber_id.clone(),
        start_from,
        remote_addr: remote_addr.map(|a| a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_end_reason_has_a_code_that_says_whether_to_retry() {
        let cases = [
            (
                EndReason::PartitionsMoved,
                Code::Unavailable,
                "reconnect to resume",
            ),
            (EndReason::Replaced, Code::Aborted, "same subscriber_id"),
            (
                EndReason::CredentialRemoved,
                Code::Unauthenticated,
                "credential was removed",
            ),
            (
                EndReason::GrantsRevoked(vec!["00200000".into()]),
                Code::PermissionDenied,
                "no longer grants institutions 00200000",
            ),
            (EndReason::TooSlow, Code::ResourceExhausted, "queue is full"),
            (
                EndReason::SourceUnavailable,
                Code::Unavailable,
                "cannot read Kafka",
            ),
            (
                EndReason::PositionExpired("Broker: Offset out of range".into()),
                Code::OutOfRange,
                "retention; resubscribe with START_FROM_EARLIEST",
            ),
        ];
        for (reason, code, text) in cases {
            let s = ended(&reason);
            assert_eq!(s.code(), code, "{reason:?}");
            assert!(!s.message().contains("Broker:"), "Kafka's text: {s:?}");
            assert!(s.message().contains(text), "{reason:?}: {}", s.message());
        }
    }

    #[test]
    fn an_expired_cursor_carries_the_earliest_offsets_as_error_details() {
        use tonic_types::StatusExt;
        let s = refused(BackendError::OutOfRange {
            message: "too old".into(),
            earliest: vec![(0, 5), (1, 7)],
        });
        assert_eq!(s.code(), Code::OutOfRange);
        let info = s.get_details_error_info().expect("error info");
        assert_eq!(info.reason, "CURSOR_OUT_OF_RANGE");
        assert_eq!(info.metadata["partition-1"], "7");
        assert_eq!(
            refused(BackendError::PermissionDenied("no".into())).code(),
            Code::PermissionDenied
        );
    }

    #[test]
    fn a_subscribe_message_becomes_an_attach_request() {
        let req = pb::SubscribeRequest {
            institutions: vec!["00001".into()],
            subscriber_name: "billing".into(),
            subscriber_id: "b1".into(),
            start_from: pb::StartFrom::Time as i32,
            start_time_ms: 1_700_000_000_000,
        };
        let a = attach_request(&req, None);
        assert_eq!(a.start_from, StartFrom::Time(1_700_000_000_000));
        assert_eq!((a.subscriber_id.as_str(), a.institutions.len()), ("b1", 1));
        let bad = pb::SubscribeRequest {
            start_from: 99,
            ..req
        };
        assert_eq!(
            attach_request(&bad, None).start_from,
            StartFrom::Unknown(99)
        );
    }
}
