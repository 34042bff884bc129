//! Zengin rules for `C` (single-byte text) fields.
//!
//! A `C` field holds JIS X 0201 bytes: space, digits, upper-case letters, the
//! punctuation `( ) , - . /`, the brackets `｢ ｣` and the half-width katakana `ｦ ｱ-ﾝ`
//! with the voiced marks `ﾞ ﾟ` as separate bytes (docs/cafis-telegram.md, "C fields").
//! Billing systems hand us names in every shape (hiragana, full-width katakana,
//! full-width letters, lower case, small kana), so [`to_field`] converts them the way
//! Zengin transfer data does; anything it cannot convert is an error that names the
//! field and the character, never a silent `?`.

use thiserror::Error;

/// Why a value cannot go into, or come out of, a `C` field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KanaError {
    /// The input holds a character with no form in a `C` field (kanji, emoji, `&`...).
    #[error(
        "{field}: character {ch:?} (U+{code:04X}) at position {index} has no form in a C field \
         (JIS X 0201 digits, upper-case letters, half-width katakana, space and ( ) , - . /)",
        code = u32::from(*ch)
    )]
    Unrepresentable {
        field: &'static str,
        ch: char,
        /// Position of the character in the input, counted in characters from 0.
        index: usize,
    },
    /// A received field holds a byte outside the `C` character set.
    #[error("{field}: byte 0x{byte:02X} at position {index} is not a C-field character")]
    InvalidByte {
        field: &'static str,
        byte: u8,
        /// Position of the byte inside the field, from 0.
        index: usize,
    },
}

const DAKUTEN: u8 = 0xDE; // ﾞ
const HANDAKUTEN: u8 = 0xDF; // ﾟ

/// Converts `input` by the Zengin rules and returns exactly `width` bytes, left-aligned
/// and padded with spaces.
///
/// Rules: full-width katakana and hiragana become half-width katakana; voiced and
/// semi-voiced kana become the kana followed by `ﾞ`/`ﾟ` (two bytes); small kana are
/// enlarged (`ｧ`→`ｱ`, `ｯ`→`ﾂ`, `ｬ`→`ﾔ`); `ヰ ヱ` become `ｲ ｴ`; the long-vowel mark (`ー`,
/// `ｰ`) becomes `-`; full-width letters, digits and punctuation become ASCII; lower
/// case becomes upper case; the ideographic space becomes a space. When the result is
/// longer than `width` it is truncated, and a kana whose `ﾞ`/`ﾟ` would fall past the
/// end is dropped together with its mark, so the field never ends in a kana that has
/// lost its mark.
pub fn to_field(field: &'static str, input: &str, width: usize) -> Result<Vec<u8>, KanaError> {
    let mut out = convert(field, input)?;
    if out.len() > width {
        let mut cut = width;
        // The first byte dropped is a mark: the kana before it goes too.
        while cut > 0 && is_mark(out[cut]) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.resize(width, b' ');
    Ok(out)
}

/// Reads a received `C` field back into text: trailing padding is removed and the
/// half-width katakana come back as Unicode U+FF61..U+FF9F. Only bytes that
/// [`to_field`] can produce are accepted, so `to_field(from_field(b))` gives `b` back.
pub fn from_field(field: &'static str, bytes: &[u8]) -> Result<String, KanaError> {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    bytes[..end]
        .iter()
        .enumerate()
        .map(|(index, &byte)| {
            if !is_c_byte(byte) {
                Err(KanaError::InvalidByte { field, byte, index })
            } else if byte < 0x80 {
                Ok(char::from(byte))
            } else {
                // 0xA1..=0xDF map one to one onto U+FF61..=U+FF9F.
                Ok(char::from_u32(0xFF61 + u32::from(byte - 0xA1)).unwrap_or('\u{FFFD}'))
            }
        })
        .collect()
}

/// Whether `b` may appear in a `C` field on the wire.
pub(crate) fn is_c_byte(b: u8) -> bool {
    matches!(b,
        b' ' | b'(' | b')' | b',' | b'-' | b'.' | b'/' | b'0'..=b'9' | b'A'..=b'Z'
        | 0xA2 | 0xA3 // ｢ ｣
        | 0xA6 // ｦ
        | 0xB1..=0xDD // ｱ..ﾝ
        | DAKUTEN | HANDAKUTEN)
}

fn is_mark(b: u8) -> bool {
    b == DAKUTEN || b == HANDAKUTEN
}

/// Full-width katakana U+30A1..=U+30FA in code-point order, as half-width text.
const KATAKANA: [&str; 90] = [
    "ｱ", "ｱ", "ｲ", "ｲ", "ｳ", "ｳ", "ｴ", "ｴ", "ｵ", "ｵ", // ァアィイゥウェエォオ
    "ｶ", "ｶﾞ", "ｷ", "ｷﾞ", "ｸ", "ｸﾞ", "ｹ", "ｹﾞ", "ｺ", "ｺﾞ", // カガキギクグケゲコゴ
    "ｻ", "ｻﾞ", "ｼ", "ｼﾞ", "ｽ", "ｽﾞ", "ｾ", "ｾﾞ", "ｿ", "ｿﾞ", // サザシジスズセゼソゾ
    "ﾀ", "ﾀﾞ", "ﾁ", "ﾁﾞ", "ﾂ", "ﾂ", "ﾂﾞ", "ﾃ", "ﾃﾞ", "ﾄ",
    "ﾄﾞ", // タダチヂッツヅテデトド
    "ﾅ", "ﾆ", "ﾇ", "ﾈ", "ﾉ", // ナニヌネノ
    "ﾊ", "ﾊﾞ", "ﾊﾟ", "ﾋ", "ﾋﾞ", "ﾋﾟ", "ﾌ", "ﾌﾞ", "ﾌﾟ", // ハバパヒビピフブプ
    "ﾍ", "ﾍﾞ", "ﾍﾟ", "ﾎ", "ﾎﾞ", "ﾎﾟ", // ヘベペホボポ
    "ﾏ", "ﾐ", "ﾑ", "ﾒ", "ﾓ", // マミムメモ
    "ﾔ", "ﾔ", "ﾕ", "ﾕ", "ﾖ", "ﾖ", // ャヤュユョヨ
    "ﾗ", "ﾘ", "ﾙ", "ﾚ", "ﾛ", // ラリルレロ
    "ﾜ", "ﾜ", "ｲ", "ｴ", "ｦ", "ﾝ", // ヮワヰヱヲン
    "ｳﾞ", "ｶ", "ｹ", "ﾜﾞ", "ｲﾞ", "ｴﾞ", "ｦﾞ", // ヴヵヶヷヸヹヺ
];

/// Half-width small kana ｧ..ｯ (U+FF67..=U+FF6F) enlarged.
const SMALL_HALF: [&str; 9] = ["ｱ", "ｲ", "ｳ", "ｴ", "ｵ", "ﾔ", "ﾕ", "ﾖ", "ﾂ"];

fn convert(field: &'static str, input: &str) -> Result<Vec<u8>, KanaError> {
    let mut out = Vec::with_capacity(input.len());
    for (index, ch) in input.chars().enumerate() {
        let err = || KanaError::Unrepresentable { field, ch, index };
        let c = u32::from(ch);
        match ch {
            // Hiragana ぁ..ゖ sit 0x60 below their katakana.
            '\u{3041}'..='\u{3096}' => push_half(&mut out, KATAKANA[(c + 0x60 - 0x30A1) as usize]),
            '\u{30A1}'..='\u{30FA}' => push_half(&mut out, KATAKANA[(c - 0x30A1) as usize]),
            'ー' | 'ｰ' | '‐' | '−' => out.push(b'-'),
            '゛' | '\u{3099}' => out.push(DAKUTEN),
            '゜' | '\u{309A}' => out.push(HANDAKUTEN),
            '　' => out.push(b' '),
            '。' | '｡' | '・' | '･' => out.push(b'.'),
            '、' | '､' => out.push(b','),
            '「' => out.push(0xA2),
            '」' => out.push(0xA3),
            '\u{FF67}'..='\u{FF6F}' => push_half(&mut out, SMALL_HALF[(c - 0xFF67) as usize]),
            '\u{FF61}'..='\u{FF9F}' => {
                let b = (c - 0xFF61 + 0xA1) as u8;
                if !is_c_byte(b) {
                    return Err(err());
                }
                out.push(b);
            }
            // Full-width ASCII ！..～ sit 0xFEE0 above ASCII.
            '\u{FF01}'..='\u{FF5E}' => push_ascii(&mut out, (c - 0xFEE0) as u8).ok_or_else(err)?,
            _ if ch.is_ascii() => push_ascii(&mut out, c as u8).ok_or_else(err)?,
            _ => return Err(err()),
        }
    }
    Ok(out)
}

/// Pushes half-width katakana text (U+FF61..=U+FF9F only, from the tables above) as
/// JIS X 0201 bytes.
fn push_half(out: &mut Vec<u8>, half: &str) {
    out.extend(half.chars().map(|c| (u32::from(c) - 0xFF61 + 0xA1) as u8));
}

fn push_ascii(out: &mut Vec<u8>, b: u8) -> Option<()> {
    let b = b.to_ascii_uppercase();
    is_c_byte(b).then(|| out.push(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(input: &str, width: usize) -> String {
        from_field("t", &to_field("t", input, width).unwrap()).unwrap()
    }

    #[test]
    fn katakana_table_matches_code_points() {
        // Spot checks across the table, so an off-by-one shows.
        for (full, half) in [
            ('ァ', "ｱ"),
            ('ガ', "ｶﾞ"),
            ('ッ', "ﾂ"),
            ('ド', "ﾄﾞ"),
            ('ノ', "ﾉ"),
            ('ポ', "ﾎﾟ"),
            ('モ', "ﾓ"),
            ('ョ', "ﾖ"),
            ('ロ', "ﾛ"),
            ('ン', "ﾝ"),
            ('ヴ', "ｳﾞ"),
            ('ヺ', "ｦﾞ"),
        ] {
            assert_eq!(field(&full.to_string(), 4), half, "{full}");
        }
    }
}
