//! Downloads of a search result: CSV (UTF-8 with a BOM, or Shift_JIS for Japanese
//! spreadsheets) and fixed-length records (Shift_JIS, 128 bytes and CRLF each, layout
//! in `docs/console.md`). At most [`MAX_ROWS`] rows; past it the download is refused
//! with a message asking to narrow the search, so a file never silently misses rows.
//! A download is exact: it holds the rows written up to its start (a row-number
//! snapshot), read with keyset paging (no offset that shifts as rows arrive). At most
//! [`MAX_CONCURRENT`] downloads run at once per replica, bounding their memory.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mpn_history::Payment;

use super::pages::jst;
use super::{ConsoleState, Refusal, SearchParams, Staff};

/// The most rows one download holds.
pub(crate) const MAX_ROWS: u64 = 50_000;
/// Downloads built at once on one replica; more get 429 (try again shortly).
pub(crate) const MAX_CONCURRENT: usize = 2;
const CHUNK: u64 = 1_000;

/// The CSV columns, in order.
pub(crate) const CSV_COLUMNS: [&str; 18] = [
    "notification_id",
    "institution",
    "kind",
    "status",
    "transaction_key",
    "customer_number",
    "amount",
    "paid_at_jst",
    "channel",
    "confirmation_number",
    "collection_method",
    "bank_code",
    "branch_code",
    "payment_class",
    "fee_name",
    "payer_kana",
    "original_transaction_key",
    "linked_id",
];

/// Fixed-length record size, CRLF not counted.
pub(crate) const RECORD_BYTES: usize = 128;

#[derive(Debug)]
enum Failure {
    Refused(Refusal),
    TooMany,
    Store(String),
}

/// Every row of the search (paged through the store), or why not.
async fn rows(
    state: &ConsoleState,
    staff: &Staff,
    params: &SearchParams,
) -> Result<Vec<Payment>, Failure> {
    let mut query = params.query(staff, CHUNK).map_err(Failure::Refused)?;
    query.offset = 0;
    let store = |e: mpn_history::HistoryError| Failure::Store(e.to_string());
    query.max_row_no = Some(
        state
            .history
            .max_row_no(&query.institutions)
            .await
            .map_err(store)?,
    );
    let mut all: Vec<Payment> = Vec::new();
    loop {
        let page = state.history.search(&query).await.map_err(store)?;
        let n = page.len() as u64;
        all.extend(page);
        if all.len() as u64 > MAX_ROWS {
            return Err(Failure::TooMany);
        }
        match all.last() {
            Some(last) if n == CHUNK => query.before = Some((last.paid_at_us, last.row_no)),
            _ => return Ok(all),
        }
    }
}

/// A free-text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab,
/// CR) is written with a leading `'`, as OWASP advises for CSV exports.
fn cell(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

fn csv_bytes(rows: &[Payment], shift_jis: bool) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let _ = w.write_record(CSV_COLUMNS);
    for p in rows {
        let _ = w.write_record([
            p.notification_id.as_str(),
            &p.institution,
            &p.kind,
            &p.status,
            &p.transaction_key,
            &p.customer_number,
            &p.amount.to_string(),
            &jst(p.paid_at_us),
            &p.channel,
            &p.confirmation_number,
            &p.collection_method,
            &p.bank_code,
            &p.branch_code,
            &p.payment_class,
            &cell(&p.fee_name),
            &cell(&p.payer_kana),
            &p.original_transaction_key,
            &p.linked_id,
        ]);
    }
    let text = w.into_inner().unwrap_or_default();
    if shift_jis {
        let text = String::from_utf8_lossy(&text);
        encoding_rs::SHIFT_JIS.encode(&text).0.into_owned()
    } else {
        let mut out = "\u{feff}".as_bytes().to_vec();
        out.extend(text);
        out
    }
}

fn pad(out: &mut Vec<u8>, value: &str, width: usize) {
    let bytes: Vec<u8> = value.bytes().filter(u8::is_ascii).take(width).collect();
    out.extend(&bytes);
    out.extend(std::iter::repeat_n(b' ', width - bytes.len()));
}

fn digits(out: &mut Vec<u8>, value: i64, width: usize) {
    let s = format!("{:0width$}", value.max(0), width = width);
    out.extend(s.as_bytes().iter().skip(s.len().saturating_sub(width)));
}

fn code(value: &str, table: &[(&str, u8)]) -> u8 {
    table
        .iter()
        .find(|(k, _)| *k == value)
        .map_or(b'0', |(_, c)| *c)
}

/// The fixed-length file: one data record per payment, then a trailer with the
/// count and the total amount.
pub(crate) fn fixed_bytes(rows: &[Payment]) -> Vec<u8> {
    let mut out = Vec::with_capacity((rows.len() + 1) * (RECORD_BYTES + 2));
    let mut total = 0i64;
    for p in rows {
        let start = out.len();
        out.push(b'2');
        out.push(code(
            &p.kind,
            &[
                ("payment", b'1'),
                ("cancellation", b'2'),
                ("preliminary", b'4'),
                ("confirmed", b'5'),
                ("preliminary_cancel", b'6'),
            ],
        ));
        pad(&mut out, &p.transaction_key, 26);
        pad(&mut out, &p.institution, 8);
        pad(&mut out, &p.customer_number, 20);
        pad(&mut out, &p.confirmation_number, 6);
        digits(&mut out, p.amount, 11);
        pad(
            &mut out,
            &jst(p.paid_at_us).replace(['-', ' ', ':'], ""),
            14,
        );
        out.push(code(
            &p.channel,
            &[
                ("counter", b'1'),
                ("atm", b'2'),
                ("internet_banking", b'3'),
                ("telephone_banking", b'4'),
            ],
        ));
        out.push(code(
            &p.status,
            &[
                ("paid", b'1'),
                ("cancelled", b'2'),
                ("open", b'3'),
                ("closed", b'4'),
            ],
        ));
        pad(&mut out, &p.bank_code, 4);
        pad(&mut out, &p.branch_code, 3);
        pad(&mut out, &p.original_transaction_key, 26);
        let used = out.len() - start;
        out.extend(std::iter::repeat_n(b' ', RECORD_BYTES - used));
        out.extend(b"\r\n");
        total = total.saturating_add(p.amount);
    }
    let start = out.len();
    out.push(b'9');
    digits(&mut out, rows.len() as i64, 10);
    digits(&mut out, total, 15);
    let used = out.len() - start;
    out.extend(std::iter::repeat_n(b' ', RECORD_BYTES - used));
    out.extend(b"\r\n");
    out
}

fn file(bytes: Vec<u8>, content_type: &'static str, name: &'static str) -> Response {
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static(name));
    res
}

enum Format {
    Csv,
    Fixed,
}

async fn download(
    state: &ConsoleState,
    headers: &HeaderMap,
    params: &SearchParams,
    format: Format,
    api: bool,
) -> Response {
    let Some(staff) = state.staff(headers) else {
        return if api {
            super::api::unauthenticated()
        } else {
            axum::response::Redirect::to("/login").into_response()
        };
    };
    let shift_jis = match params.shift_jis() {
        Ok(s) => s,
        Err(r) => return super::api::refused(r),
    };
    let Ok(_permit) = state.exports.clone().try_acquire_owned() else {
        return super::api::error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{MAX_CONCURRENT} downloads are being built on this server; try again in a minute"
            ),
        );
    };
    match rows(state, &staff, params).await {
        Ok(rows) => match format {
            Format::Csv if shift_jis => file(
                csv_bytes(&rows, true),
                "text/csv; charset=Shift_JIS",
                "attachment; filename=\"payments.csv\"",
            ),
            Format::Csv => file(
                csv_bytes(&rows, false),
                "text/csv; charset=utf-8",
                "attachment; filename=\"payments.csv\"",
            ),
            Format::Fixed => file(
                fixed_bytes(&rows),
                "text/plain; charset=Shift_JIS",
                "attachment; filename=\"payments.txt\"",
            ),
        },
        Err(Failure::Refused(r)) => super::api::refused(r),
        Err(Failure::TooMany) => super::api::error(
            StatusCode::BAD_REQUEST,
            format!(
                "the search matches more than {MAX_ROWS} rows: narrow it (dates, amounts, kind) and download again"
            ),
        ),
        Err(Failure::Store(e)) => super::api::unavailable(e),
    }
}

pub(super) async fn csv(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    download(&state, &headers, &params, Format::Csv, false).await
}

pub(super) async fn fixed(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    download(&state, &headers, &params, Format::Fixed, false).await
}

pub(super) async fn csv_api(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    download(&state, &headers, &params, Format::Csv, true).await
}

pub(super) async fn fixed_api(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    download(&state, &headers, &params, Format::Fixed, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(amount: i64, fee: &str) -> Payment {
        Payment {
            notification_id: "00000001012026120600000001:payment".into(),
            row_no: 1,
            day: 20261206,
            institution: "00200000".into(),
            kind: "payment".into(),
            status: "paid".into(),
            linked_id: String::new(),
            transaction_key: "00000001012026120600000001".into(),
            original_transaction_key: String::new(),
            amount,
            channel: "atm".into(),
            collection_method: "online".into(),
            bank_code: "0001".into(),
            branch_code: "123".into(),
            payment_class: String::new(),
            fee_name: fee.into(),
            paid_at: "2026-12-06T10:15:00+09:00".into(),
            paid_at_us: 1_796_519_700_000_000,
            counters: None,
            customer_number: "CUST01".into(),
            confirmation_number: "123456".into(),
            payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
            key_id: "k1".into(),
            source_partition: 0,
            source_offset: 7,
            written_at_us: 0,
        }
    }

    #[test]
    fn csv_has_a_bom_or_is_shift_jis_and_quotes_what_needs_it() {
        let rows = [payment(12_345, "水道料金, 12月分")];
        let utf8 = csv_bytes(&rows, false);
        assert!(utf8.starts_with("\u{feff}".as_bytes()));
        let text = String::from_utf8(utf8[3..].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        assert_eq!(lines.next().unwrap(), CSV_COLUMNS.join(","));
        let row = lines.next().unwrap();
        assert!(
            row.contains(",CUST01,12345,2026-12-06 10:15:00,atm,123456,"),
            "{row}"
        );
        assert!(row.contains("\"水道料金, 12月分\""), "{row}");
        let sjis = csv_bytes(&rows, true);
        let (back, _, bad) = encoding_rs::SHIFT_JIS.decode(&sjis);
        assert!(!bad);
        assert!(back.contains("水道料金") && back.contains("ﾔﾏﾀﾞ ﾀﾛｳ"));
        assert!(!sjis.starts_with("\u{feff}".as_bytes()));
        // A fee name a spreadsheet would run as a formula is written as text.
        let text = String::from_utf8(csv_bytes(&[payment(1, "=HYPERLINK(\"x\")")], false)).unwrap();
        assert!(text.contains(",\"'=HYPERLINK(\"\"x\"\")\","), "{text}");
    }

    #[test]
    fn fixed_length_records_are_128_bytes_with_a_trailer() {
        let out = fixed_bytes(&[payment(12_345, "x"), payment(5, "y")]);
        let records: Vec<&[u8]> = out
            .split(|b| *b == b'\n')
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(records.len(), 3);
        for r in &records {
            assert_eq!(r.len(), RECORD_BYTES + 1, "128 bytes and CR");
            assert!(r.ends_with(b"\r"));
        }
        let first = std::str::from_utf8(records[0]).unwrap();
        assert_eq!(&first[..2], "21");
        assert_eq!(&first[2..28], "00000001012026120600000001");
        assert_eq!(&first[28..36], "00200000");
        assert_eq!(&first[36..56], "CUST01              ");
        assert_eq!(&first[62..73], "00000012345");
        assert_eq!(&first[73..87], "20261206101500");
        assert_eq!(&first[87..89], "21");
        let trailer = std::str::from_utf8(records[2]).unwrap();
        assert_eq!(&trailer[..26], "90000000002000000000012350");
    }
}
