//! The recovery key: `K` written as 64 lowercase hex digits in 16 groups of 4.

use std::fmt;

use zeroize::Zeroizing;

use crate::keys::{BackupKey, KEY_LEN};

/// `K` in the form a person writes down: `abcd 0123 …` (16 groups of 4).
pub struct RecoveryKey(Zeroizing<String>);

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(<redacted>)")
    }
}

/// Why a typed recovery key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseRecoveryKeyError {
    /// A character that is not a hex digit, space or dash.
    #[error("a recovery key holds only hex digits 0-9 and a-f (spaces and dashes are ignored); found {found:?} at position {position}")]
    InvalidCharacter {
        /// The offending character.
        found: char,
        /// Its 1-based position in the input.
        position: usize,
    },
    /// Too few or too many digits.
    #[error("a recovery key has 64 hex digits; this one has {0}")]
    WrongLength(usize),
}

impl RecoveryKey {
    /// Formats `K` as 16 space-separated groups of 4 lowercase hex digits.
    pub fn from_backup_key(k: &BackupKey) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(79));
        for (i, b) in k.expose_secret().iter().enumerate() {
            if i > 0 && i % 2 == 0 {
                s.push(' ');
            }
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        Self(s)
    }

    /// The formatted key, to show the user once.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Reads a recovery key as typed: case, spaces (any whitespace) and dashes
    /// are ignored; anything else is an error naming the character.
    pub fn parse(input: &str) -> Result<BackupKey, ParseRecoveryKeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        let mut digits = 0usize;
        for (pos, c) in input.chars().enumerate() {
            if c.is_whitespace() || c == '-' {
                continue;
            }
            let Some(v) = c.to_digit(16) else {
                return Err(ParseRecoveryKeyError::InvalidCharacter {
                    found: c,
                    position: pos + 1,
                });
            };
            if digits < 2 * KEY_LEN {
                bytes[digits / 2] |= (v as u8) << if digits.is_multiple_of(2) { 4 } else { 0 };
            }
            digits += 1;
        }
        if digits != 2 * KEY_LEN {
            return Err(ParseRecoveryKeyError::WrongLength(digits));
        }
        Ok(BackupKey::from_bytes(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn format_is_sixteen_groups_of_four() {
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i as u8) * 8 + 1;
        }
        let rk = RecoveryKey::from_backup_key(&BackupKey::from_bytes(raw));
        let s = rk.expose_secret();
        assert_eq!(s.len(), 79);
        let groups: Vec<&str> = s.split(' ').collect();
        assert_eq!(groups.len(), 16);
        assert!(groups.iter().all(|g| g.len() == 4));
        assert_eq!(groups[0], "0109");
        assert!(s
            .chars()
            .all(|c| c == ' ' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            RecoveryKey::parse("abcd xyz").unwrap_err(),
            ParseRecoveryKeyError::InvalidCharacter {
                found: 'x',
                position: 6
            }
        );
        assert_eq!(
            RecoveryKey::parse("abcd").unwrap_err(),
            ParseRecoveryKeyError::WrongLength(4)
        );
        assert_eq!(
            RecoveryKey::parse(&"a".repeat(65)).unwrap_err(),
            ParseRecoveryKeyError::WrongLength(65)
        );
    }

    proptest! {
        #[test]
        fn parse_ignores_case_spaces_and_dashes(raw in any::<[u8; 32]>(), upper in any::<bool>(), dash in any::<bool>()) {
            let k = BackupKey::from_bytes(raw);
            let mut s = RecoveryKey::from_backup_key(&k).expose_secret().to_string();
            if upper { s = s.to_uppercase(); }
            if dash { s = s.replace(' ', "-"); } else { s = s.replace(' ', ""); }
            let back = RecoveryKey::parse(&format!("  {s}\n")).unwrap();
            prop_assert_eq!(back.expose_secret(), &raw);
        }

        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = RecoveryKey::parse(&s);
        }
    }
}
