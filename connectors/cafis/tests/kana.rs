//! The Zengin rules for C fields, through the public `kana` functions.

use mpn_cafis::KanaError;
use mpn_cafis::kana::{from_field, to_field};

fn conv(input: &str, width: usize) -> String {
    let bytes = to_field("payer_kana", input, width).unwrap();
    assert_eq!(bytes.len(), width, "always exactly the field width");
    from_field("payer_kana", &bytes).unwrap()
}

#[test]
fn full_width_katakana_and_hiragana_become_half_width() {
    assert_eq!(conv("ヤマダ　タロウ", 48), "ﾔﾏﾀﾞ ﾀﾛｳ");
    assert_eq!(conv("やまだ　たろう", 48), "ﾔﾏﾀﾞ ﾀﾛｳ");
    assert_eq!(conv("ﾔﾏﾀﾞ ﾀﾛｳ", 48), "ﾔﾏﾀﾞ ﾀﾛｳ");
}

#[test]
fn voiced_and_semi_voiced_kana_become_two_bytes() {
    let bytes = to_field("payer_kana", "ガパヴ", 6).unwrap();
    // ｶ ﾞ ﾊ ﾟ ｳ ﾞ
    assert_eq!(bytes, [0xB6, 0xDE, 0xCA, 0xDF, 0xB3, 0xDE]);
    assert_eq!(conv("ぱぴぷぺぽ", 10), "ﾊﾟﾋﾟﾌﾟﾍﾟﾎﾟ");
    // Combining marks (decomposed input) and the spacing marks.
    assert_eq!(conv("カ\u{3099}ハ\u{309A}", 8), "ｶﾞﾊﾟ");
    assert_eq!(conv("カ゛ハ゜", 8), "ｶﾞﾊﾟ");
}

#[test]
fn small_kana_are_enlarged() {
    assert_eq!(conv("キャッシュ", 10), "ｷﾔﾂｼﾕ");
    assert_eq!(conv("ｷｬｯｼｭ", 10), "ｷﾔﾂｼﾕ");
    assert_eq!(conv("ァィゥェォヵヶヮ", 10), "ｱｲｳｴｵｶｹﾜ");
    assert_eq!(conv("ヰヱヲ", 10), "ｲｴｦ");
}

#[test]
fn long_vowel_mark_becomes_hyphen() {
    assert_eq!(conv("コーヒー", 10), "ｺ-ﾋ-");
    assert_eq!(conv("ｺｰﾋｰ", 10), "ｺ-ﾋ-");
}

#[test]
fn letters_are_upper_cased_and_full_width_ascii_narrowed() {
    assert_eq!(conv("abc Def", 10), "ABC DEF");
    assert_eq!(conv("ＡＢＣ１２３ｘｙｚ", 10), "ABC123XYZ");
    assert_eq!(conv("（カ）ヤマダ．", 12), "(ｶ)ﾔﾏﾀﾞ.");
    assert_eq!(conv("「ア」、イ。ウ・エ", 12), "｢ｱ｣,ｲ.ｳ.ｴ");
}

#[test]
fn padding_is_spaces() {
    assert_eq!(to_field("f", "ｱ", 4).unwrap(), b"\xB1   ");
    assert_eq!(to_field("f", "", 3).unwrap(), b"   ");
}

#[test]
fn truncation_never_splits_a_kana_from_its_mark() {
    // ｶﾞ straddles the boundary: both go.
    assert_eq!(conv("アガ", 2), "ｱ");
    assert_eq!(to_field("f", "アガ", 2).unwrap(), b"\xB1 ");
    // ﾊﾟ fits exactly: kept.
    assert_eq!(conv("アパ", 3), "ｱﾊﾟ");
    // A plain kana at the boundary is simply cut after.
    assert_eq!(conv("アイウ", 2), "ｱｲ");
    // The mark right after the boundary belongs to the last kept kana.
    assert_eq!(conv("ヤマダ", 3), "ﾔﾏ");
    assert_eq!(conv("ヤマダ", 4), "ﾔﾏﾀﾞ");
    // A name much longer than the field.
    let long = "ガ".repeat(30);
    assert_eq!(conv(&long, 48), "ｶﾞ".repeat(24));
    assert_eq!(conv(&long, 47), "ｶﾞ".repeat(23));
}

#[test]
fn characters_without_a_form_are_errors_naming_field_and_character() {
    let err = to_field("payer_kana", "ヤマダ太郎", 48).unwrap_err();
    assert_eq!(
        err,
        KanaError::Unrepresentable {
            field: "payer_kana",
            ch: '太',
            index: 3
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("payer_kana") && msg.contains("'太'") && msg.contains("U+592A"),
        "{msg}"
    );
    // Emoji, ASCII outside the Zengin set, control characters: never a silent '?'.
    for (input, ch) in [
        ("ｱ😀", '😀'),
        ("A&B", '&'),
        ("A?", '?'),
        ("A\nB", '\n'),
        ("ｱ~", '~'),
    ] {
        match to_field("detail", input, 10) {
            Err(KanaError::Unrepresentable {
                field: "detail",
                ch: c,
                ..
            }) => assert_eq!(c, ch),
            other => panic!("{input:?}: {other:?}"),
        }
    }
}

#[test]
fn decoding_rejects_bytes_outside_the_c_set() {
    // ｧ (small kana) and lower case never appear in a C field we produce.
    assert_eq!(
        from_field("payer_kana", b"\xB1\xA7  "),
        Err(KanaError::InvalidByte {
            field: "payer_kana",
            byte: 0xA7,
            index: 1
        })
    );
    assert!(from_field("payer_kana", b"abc").is_err());
    assert!(from_field("payer_kana", b"\x81\x40").is_err()); // a Shift_JIS double-byte char
}

#[test]
fn every_c_byte_round_trips() {
    for b in 0..=255u8 {
        let one = [b];
        if let Ok(text) = from_field("f", &one) {
            let want: &[u8] = if b == b' ' { b"" } else { &one };
            assert_eq!(
                to_field("f", &text, want.len()).unwrap(),
                want,
                "byte {b:#04X}"
            );
        }
    }
}
