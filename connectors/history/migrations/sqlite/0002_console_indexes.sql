-- The staff console's reads (row_no is the rowid here): searches order by payment
-- time, and a late payment finds the cancellation that names it.
CREATE INDEX payments_by_time ON payments (institution, paid_at_us);
CREATE INDEX payments_by_original ON payments (institution, original_transaction_key)
    WHERE original_transaction_key <> '';
