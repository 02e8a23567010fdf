//! GPT-2's byte-level alphabet: every byte maps to one printable char, so any byte string
//! becomes a text whose chars are BPE symbols.
//!
//! Bytes `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` map to the char of the same value; the other
//! 68 bytes map, in increasing order, to U+0100, U+0101, ... U+0143 (so the space 0x20
//! becomes `Ġ` U+0120 and the newline 0x0A becomes `Ċ` U+010A).

/// One past the highest char of the alphabet (U+0143).
const ALPHABET_END: usize = 0x144;

const fn keeps_its_value(b: usize) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0;
    while b < 256 {
        let cp = if keeps_its_value(b) {
            b as u32
        } else {
            shifted += 1;
            0xFF + shifted
        };
        // Every value here is below U+0144, a valid scalar value.
        out[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

const fn build_char_to_byte() -> [i16; ALPHABET_END] {
    let mut out = [-1i16; ALPHABET_END];
    let mut b = 0;
    while b < 256 {
        out[BYTE_TO_CHAR[b] as usize] = b as i16;
        b += 1;
    }
    out
}

/// The char each byte stands for.
pub(crate) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// The inverse of [`BYTE_TO_CHAR`], -1 for chars outside the alphabet.
const CHAR_TO_BYTE: [i16; ALPHABET_END] = build_char_to_byte();

/// The byte a char of the alphabet stands for; `None` for any other char.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let b = *CHAR_TO_BYTE.get(c as usize)?;
    u8::try_from(b).ok()
}

/// Appends the bytes a byte-level token text stands for. Chars outside the alphabet
/// (tokens added by hand with raw Unicode) are kept as their own UTF-8, so no text is lost;
/// llama.cpp prints an `[UNK_BYTE_…]` marker there instead.
pub(crate) fn decode_into(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_with_known_anchors() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c), "char {c:?} used twice");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], '\u{143}');
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn decode_keeps_foreign_chars() {
        let mut out = Vec::new();
        decode_into("ĠhiĊ€", &mut out);
        assert_eq!(out, " hi\n€".as_bytes());
    }
}
