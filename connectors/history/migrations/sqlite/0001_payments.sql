-- The embedded store (mpn-notify demo): the same table as PostgreSQL's, unpartitioned;
-- retention deletes the rows of expired months instead of dropping partitions.
CREATE TABLE payments (
    row_no                   INTEGER PRIMARY KEY AUTOINCREMENT,
    day                      INTEGER NOT NULL,
    notification_id          TEXT    NOT NULL,
    institution              TEXT    NOT NULL,
    kind                     TEXT    NOT NULL,
    status                   TEXT    NOT NULL,
    linked_id                TEXT    NOT NULL DEFAULT '',
    transaction_key          TEXT    NOT NULL,
    original_transaction_key TEXT    NOT NULL DEFAULT '',
    amount                   INTEGER NOT NULL,
    channel                  TEXT    NOT NULL,
    collection_method        TEXT    NOT NULL,
    bank_code                TEXT    NOT NULL,
    branch_code              TEXT    NOT NULL,
    payment_class            TEXT    NOT NULL,
    fee_name                 TEXT    NOT NULL,
    paid_at                  TEXT    NOT NULL,
    paid_at_us               INTEGER NOT NULL,
    counter_date             INTEGER NOT NULL DEFAULT 0,
    inquiry_count            INTEGER NOT NULL DEFAULT 0,
    clearing_count           INTEGER NOT NULL DEFAULT 0,
    clearing_amount          INTEGER NOT NULL DEFAULT 0,
    cancel_count             INTEGER NOT NULL DEFAULT 0,
    cancel_amount            INTEGER NOT NULL DEFAULT 0,
    key_id                   TEXT    NOT NULL,
    customer_number          BLOB    NOT NULL,
    confirmation_number      BLOB    NOT NULL,
    payer_kana               BLOB    NOT NULL,
    customer_index           BLOB    NOT NULL,
    source_partition         INTEGER NOT NULL,
    source_offset            INTEGER NOT NULL,
    published_at_us          INTEGER NOT NULL,
    written_at_us            INTEGER NOT NULL,
    UNIQUE (day, notification_id)
);

CREATE INDEX payments_by_key ON payments (institution, transaction_key);
CREATE INDEX payments_by_customer ON payments (institution, customer_index);
