//! The engine's side of the CAFIS-style links (`mpn-cafis-link`): their internal
//! subscriptions come from the hub, their "may have sent" marks live in the cursor
//! store under the link's own subscriber key, and the notices their hosts refuse for
//! good go to the dead-letter writer.

use std::sync::Arc;

use futures::future::BoxFuture;
use mpn_cafis_link::{LINK_SERVICE, LINK_SUBSCRIBER, LinkBackend, wire};
use mpn_delivery::{Attachment, BackendError, InternalBackend, Outbound, SubscriberQueue};
use prost::Message as _;

use crate::cursors::{SubscriberKey, internal_login};
use crate::dlq::{DeadLetter, DeadLetters, Finish};
use crate::subscriptions::Hub;

/// What the links of this replica are given by the engine.
#[derive(Debug, Clone)]
pub(crate) struct LinkSupport {
    pub hub: Arc<Hub>,
    pub dead_letters: DeadLetters,
}

impl LinkSupport {
    fn key(institution: &str) -> Result<SubscriberKey, String> {
        SubscriberKey::new(institution, &internal_login(LINK_SERVICE), LINK_SUBSCRIBER)
    }
}

impl InternalBackend for LinkSupport {
    fn attach_internal(
        &self,
        service: &str,
        institution: &str,
        subscriber_id: &str,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError> {
        self.hub
            .attach_internal(service, institution, subscriber_id, queue)
    }
}

impl LinkBackend for LinkSupport {
    fn sync_marks(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let store = self.hub.cursor_store();
            store.sync().await.map_err(|e| e.to_string())
        })
    }

    fn sent_mark(&self, institution: &str, partition: i32) -> Option<i64> {
        let key = Self::key(institution).ok()?;
        self.hub.cursor_store().sent_mark(&key, partition)
    }

    fn persist_sent_mark(
        &self,
        institution: &str,
        partition: i32,
        mark: i64,
    ) -> BoxFuture<'_, Result<(), String>> {
        let key = Self::key(institution);
        Box::pin(async move {
            let key = key?;
            self.hub
                .cursor_store()
                .persist_sent_mark(&key, partition, mark)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }

    fn dead_letter(&self, item: Outbound, kind: &'static str, field: &str, message: String) {
        let n = &item.notification;
        self.dead_letters.send(DeadLetter {
            key: Some(n.institution_code.as_bytes().to_vec()),
            payload: n.encode_to_vec(),
            content_type: Some(wire::NOTIFICATION_CONTENT_TYPE.as_bytes().to_vec()),
            kind,
            field: field.to_owned(),
            message,
            partition: n.source_partition,
            offset: n.source_offset,
            hold: Finish::Delivery(item.token),
        });
    }
}
