//! The character sets of COPY's `ENCODING` option: COPY FROM decodes the
//! client's data from it into UTF-8 before parsing, COPY TO encodes each
//! record into it. Names are PostgreSQL's (documentation, 24.3.1 "Supported
//! Character Sets", matched as `pg_char_to_encoding` matches them: case and
//! punctuation ignored); the conversions are encoding_rs's, except LATIN1,
//! which is ISO 8859-1 byte for code point (encoding_rs, following the
//! WHATWG Encoding Standard, reads that label as windows-1252).
//!
//! Errors are PostgreSQL's: 22023 for an unknown name, 22021 for bytes that
//! are not valid in the named encoding, 22P05 for a character the encoding
//! cannot represent.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, EncoderResult, Encoding};

use quarry_common::SqlState;

use crate::error::{Result, user_error};

/// A character set COPY converts from and to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Charset {
    /// The server's own: no conversion.
    Utf8,
    /// ISO 8859-1.
    Latin1,
    /// Converted by encoding_rs.
    Other {
        /// PostgreSQL's name, for messages.
        name: &'static str,
        /// The conversion.
        encoding: &'static Encoding,
    },
}

/// PostgreSQL's names (cleaned: lower case, letters and digits only), the
/// name it reports, and encoding_rs's encoding.
const NAMES: &[(&[&str], &str, &Encoding)] = &[
    (&["latin2", "iso88592"], "LATIN2", encoding_rs::ISO_8859_2),
    (&["latin3", "iso88593"], "LATIN3", encoding_rs::ISO_8859_3),
    (&["latin4", "iso88594"], "LATIN4", encoding_rs::ISO_8859_4),
    (&["iso88595"], "ISO_8859_5", encoding_rs::ISO_8859_5),
    (&["iso88596"], "ISO_8859_6", encoding_rs::ISO_8859_6),
    (&["iso88597"], "ISO_8859_7", encoding_rs::ISO_8859_7),
    (&["iso88598"], "ISO_8859_8", encoding_rs::ISO_8859_8),
    (&["latin6", "iso885910"], "LATIN6", encoding_rs::ISO_8859_10),
    (&["latin7", "iso885913"], "LATIN7", encoding_rs::ISO_8859_13),
    (&["latin8", "iso885914"], "LATIN8", encoding_rs::ISO_8859_14),
    (&["latin9", "iso885915"], "LATIN9", encoding_rs::ISO_8859_15),
    (
        &["latin10", "iso885916"],
        "LATIN10",
        encoding_rs::ISO_8859_16,
    ),
    (
        &["win1250", "windows1250"],
        "WIN1250",
        encoding_rs::WINDOWS_1250,
    ),
    (
        &["win1251", "windows1251"],
        "WIN1251",
        encoding_rs::WINDOWS_1251,
    ),
    (
        &["win1252", "windows1252"],
        "WIN1252",
        encoding_rs::WINDOWS_1252,
    ),
    (
        &["win1253", "windows1253"],
        "WIN1253",
        encoding_rs::WINDOWS_1253,
    ),
    (
        &["win1254", "windows1254"],
        "WIN1254",
        encoding_rs::WINDOWS_1254,
    ),
    (
        &["win1255", "windows1255"],
        "WIN1255",
        encoding_rs::WINDOWS_1255,
    ),
    (
        &["win1256", "windows1256"],
        "WIN1256",
        encoding_rs::WINDOWS_1256,
    ),
    (
        &["win1257", "windows1257"],
        "WIN1257",
        encoding_rs::WINDOWS_1257,
    ),
    (
        &["win1258", "windows1258"],
        "WIN1258",
        encoding_rs::WINDOWS_1258,
    ),
    (
        &["win866", "windows866", "alt"],
        "WIN866",
        encoding_rs::IBM866,
    ),
    (
        &["win874", "windows874"],
        "WIN874",
        encoding_rs::WINDOWS_874,
    ),
    (&["koi8r", "koi8"], "KOI8R", encoding_rs::KOI8_R),
    (&["koi8u"], "KOI8U", encoding_rs::KOI8_U),
    (
        &["sjis", "shiftjis", "mskanji"],
        "SJIS",
        encoding_rs::SHIFT_JIS,
    ),
    (&["eucjp"], "EUC_JP", encoding_rs::EUC_JP),
    (&["euckr"], "EUC_KR", encoding_rs::EUC_KR),
    (&["gbk", "cp936", "windows936"], "GBK", encoding_rs::GBK),
    (&["gb18030"], "GB18030", encoding_rs::GB18030),
    (&["big5", "cp950", "windows950"], "BIG5", encoding_rs::BIG5),
];

impl Charset {
    /// The character set PostgreSQL calls `name`.
    ///
    /// # Errors
    /// 22023 for a name PostgreSQL does not know; 0A000 for one Quarry
    /// cannot convert.
    pub fn named(name: &str) -> Result<Charset> {
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match clean.as_str() {
            // SQL_ASCII: bytes as they are, which for a UTF-8 server means
            // UTF-8.
            "utf8" | "unicode" | "sqlascii" => return Ok(Charset::Utf8),
            "latin1" | "iso88591" => return Ok(Charset::Latin1),
            "latin5" | "iso88599" | "euccn" | "euctw" | "eucjis2004" | "shiftjis2004" | "johab"
            | "uhc" | "mulecode" => {
                return Err(user_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    format!("encoding \"{name}\" is not supported by Quarry's COPY"),
                ));
            }
            _ => {}
        }
        NAMES
            .iter()
            .find(|(names, ..)| names.contains(&clean.as_str()))
            .map(|(_, name, encoding)| Charset::Other { name, encoding })
            .ok_or_else(|| {
                user_error(
                    SqlState::INVALID_PARAMETER_VALUE,
                    format!(
                        "argument to option \"encoding\" must be a valid encoding name: \"{name}\""
                    ),
                )
            })
    }

    fn name(&self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF8",
            Charset::Latin1 => "LATIN1",
            Charset::Other { name, .. } => name,
        }
    }

    /// A decoder of a stream of this character set into UTF-8.
    pub fn decoder(self) -> Decoding {
        Decoding {
            charset: self,
            decoder: match self {
                Charset::Other { encoding, .. } => {
                    Some(encoding.new_decoder_without_bom_handling())
                }
                _ => None,
            },
        }
    }

    /// `text` (UTF-8) in this character set.
    ///
    /// # Errors
    /// 22P05 for a character it cannot represent.
    pub fn encode(self, text: &[u8]) -> Result<Vec<u8>> {
        let text = std::str::from_utf8(text).map_err(|e| {
            user_error(
                SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                format!("invalid byte sequence for encoding \"UTF8\": {e}"),
            )
        })?;
        let unmappable = |c: char| {
            let mut utf8 = [0u8; 4];
            let bytes: Vec<String> = c
                .encode_utf8(&mut utf8)
                .bytes()
                .map(|b| format!("0x{b:02x}"))
                .collect();
            user_error(
                SqlState::UNTRANSLATABLE_CHARACTER,
                format!(
                    "character with byte sequence {} in encoding \"UTF8\" has no equivalent in \
                     encoding \"{}\"",
                    bytes.join(" "),
                    self.name()
                ),
            )
        };
        match self {
            Charset::Utf8 => Ok(text.as_bytes().to_vec()),
            Charset::Latin1 => text
                .chars()
                .map(|c| u8::try_from(u32::from(c)).map_err(|_| unmappable(c)))
                .collect(),
            Charset::Other { encoding, .. } => {
                let mut encoder = encoding.new_encoder();
                let mut out = vec![0u8; encoding_capacity(&encoder, text.len())];
                let (result, _, written) =
                    encoder.encode_from_utf8_without_replacement(text, &mut out, true);
                match result {
                    EncoderResult::InputEmpty => {
                        out.truncate(written);
                        Ok(out)
                    }
                    EncoderResult::Unmappable(c) => Err(unmappable(c)),
                    EncoderResult::OutputFull => Err(user_error(
                        SqlState::INTERNAL_ERROR,
                        "the encoder's output buffer was too small",
                    )),
                }
            }
        }
    }
}

fn encoding_capacity(encoder: &encoding_rs::Encoder, len: usize) -> usize {
    encoder
        .max_buffer_length_from_utf8_without_replacement(len)
        .unwrap_or(len * 4 + 16)
}

/// A stream being decoded into UTF-8.
pub struct Decoding {
    charset: Charset,
    decoder: Option<encoding_rs::Decoder>,
}

impl Decoding {
    /// `data`, the next piece of the stream, as UTF-8; `last` ends the
    /// stream (a character cut off at its end is an error then).
    ///
    /// # Errors
    /// 22021 for bytes that are not valid in the character set.
    pub fn decode<'a>(&mut self, data: &'a [u8], last: bool) -> Result<Cow<'a, [u8]>> {
        let invalid = || {
            user_error(
                SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                format!(
                    "invalid byte sequence for encoding \"{}\"",
                    self.charset.name()
                ),
            )
        };
        match (&self.charset, &mut self.decoder) {
            (Charset::Latin1, _) => {
                let text: String = data.iter().map(|&b| char::from(b)).collect();
                Ok(Cow::Owned(text.into_bytes()))
            }
            (_, Some(decoder)) => {
                let mut text = String::with_capacity(
                    decoder
                        .max_utf8_buffer_length_without_replacement(data.len())
                        .unwrap_or(data.len() * 3 + 16),
                );
                let (result, _) =
                    decoder.decode_to_string_without_replacement(data, &mut text, last);
                match result {
                    DecoderResult::InputEmpty => Ok(Cow::Owned(text.into_bytes())),
                    DecoderResult::Malformed(..) | DecoderResult::OutputFull => Err(invalid()),
                }
            }
            // UTF-8 is checked where it is parsed.
            _ => Ok(Cow::Borrowed(data)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_postgresql_s() {
        assert_eq!(Charset::named("UTF-8").unwrap(), Charset::Utf8);
        assert_eq!(Charset::named("latin1").unwrap(), Charset::Latin1);
        assert!(matches!(
            Charset::named("WIN1252").unwrap(),
            Charset::Other {
                name: "WIN1252",
                ..
            }
        ));
        assert!(matches!(
            Charset::named("Shift_JIS").unwrap(),
            Charset::Other { name: "SJIS", .. }
        ));
        let e = Charset::named("klingon").unwrap_err();
        assert_eq!(e.sqlstate(), SqlState::INVALID_PARAMETER_VALUE);
    }

    #[test]
    fn latin1_is_one_byte_per_code_point() {
        let latin1 = Charset::Latin1;
        assert_eq!(
            latin1.encode("café\u{80}".as_bytes()).unwrap(),
            b"caf\xe9\x80"
        );
        assert_eq!(
            latin1
                .decoder()
                .decode(b"caf\xe9\x80", true)
                .unwrap()
                .as_ref(),
            "café\u{80}".as_bytes()
        );
        let e = latin1.encode("€".as_bytes()).unwrap_err();
        assert_eq!(e.sqlstate(), SqlState::UNTRANSLATABLE_CHARACTER);
        assert!(e.to_string().contains("0xe2 0x82 0xac"), "{e}");
    }

    #[test]
    fn a_character_split_between_pieces_is_decoded_whole() {
        let sjis = Charset::named("SJIS").unwrap();
        let encoded = sjis.encode("日本".as_bytes()).unwrap();
        assert_eq!(encoded.len(), 4);
        let mut decoding = sjis.decoder();
        let mut text = decoding.decode(&encoded[..1], false).unwrap().into_owned();
        text.extend(decoding.decode(&encoded[1..], true).unwrap().iter());
        assert_eq!(text, "日本".as_bytes());
        // Cut off at the end of the stream.
        let mut cut = sjis.decoder();
        assert!(cut.decode(&encoded[..3], true).is_err());
    }
}
