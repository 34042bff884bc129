-- The payment history: one row per notification, written by the history writer
-- (docs/history.md). Partitioned by month of `day`, the processing date in the
-- transaction key (YYYYMMDD), so a notification id always lands in the same partition
-- and retention drops whole months. Partitions are created by the writer on demand.
CREATE TABLE payments (
    day                      integer NOT NULL,
    notification_id          text    NOT NULL,
    row_no                   bigserial,
    institution              text    NOT NULL,
    kind                     text    NOT NULL,
    status                   text    NOT NULL,
    linked_id                text    NOT NULL DEFAULT '',
    transaction_key          text    NOT NULL,
    original_transaction_key text    NOT NULL DEFAULT '',
    amount                   bigint  NOT NULL,
    channel                  text    NOT NULL,
    collection_method        text    NOT NULL,
    bank_code                text    NOT NULL,
    branch_code              text    NOT NULL,
    payment_class            text    NOT NULL,
    fee_name                 text    NOT NULL,
    paid_at                  text    NOT NULL,
    paid_at_us               bigint  NOT NULL,
    counter_date             integer NOT NULL DEFAULT 0,
    inquiry_count            bigint  NOT NULL DEFAULT 0,
    clearing_count           bigint  NOT NULL DEFAULT 0,
    clearing_amount          bigint  NOT NULL DEFAULT 0,
    cancel_count             bigint  NOT NULL DEFAULT 0,
    cancel_amount            bigint  NOT NULL DEFAULT 0,
    -- Personal fields: AES-256-GCM under the key `key_id`, nonce first.
    key_id                   text    NOT NULL,
    customer_number          bytea   NOT NULL,
    confirmation_number      bytea   NOT NULL,
    payer_kana               bytea   NOT NULL,
    -- HMAC-SHA256(index key, institution, customer number), first 16 bytes.
    customer_index           bytea   NOT NULL,
    source_partition         integer NOT NULL,
    source_offset            bigint  NOT NULL,
    published_at_us          bigint  NOT NULL,
    written_at_us            bigint  NOT NULL,
    PRIMARY KEY (day, notification_id)
) PARTITION BY RANGE (day);

CREATE INDEX payments_by_key ON payments (institution, transaction_key);
CREATE INDEX payments_by_customer ON payments (institution, customer_index);
