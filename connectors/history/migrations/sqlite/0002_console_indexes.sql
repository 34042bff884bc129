-- The staff console's reads (row_no is the rowid here): the live view follows writing
-- time, searches order by payment time, a detail page finds the rows of a lifecycle
-- (a late payment the cancellation that names it, a confirmed notice what it closed).
CREATE INDEX payments_by_time ON payments (institution, paid_at_us);
CREATE INDEX payments_by_original ON payments (institution, original_transaction_key)
    WHERE original_transaction_key <> '';
CREATE INDEX payments_by_written ON payments (institution, written_at_us);
CREATE INDEX payments_by_linked ON payments (institution, linked_id)
    WHERE linked_id <> '';
