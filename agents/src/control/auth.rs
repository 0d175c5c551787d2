//! The control API's bearer token: read once from `--token-file`, never logged, compared in
//! constant time so response timing says nothing about how much of a guess was right.

use std::fmt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq as _;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the token {where_} is empty")]
    Empty { where_: String },
    #[error("the token {where_} holds a character that cannot travel in an HTTP header (allowed: visible ASCII)")]
    Invalid { where_: String },
}

/// A non-empty secret of visible ASCII.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text, surrounding whitespace trimmed (files end in a newline).
    pub fn new(text: &str) -> Result<Token, TokenError> {
        Token::parse(text, || "given".to_string())
    }

    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_path_buf(), source })?;
        Token::parse(&text, || format!("file {}", path.display()))
    }

    /// `where_` says where the token came from, for the error.
    fn parse(text: &str, where_: impl Fn() -> String) -> Result<Token, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty { where_: where_() });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid { where_: where_() });
        }
        Ok(Token(t.as_bytes().into()))
    }

    /// Whether `presented` is the token, in constant time: `subtle`'s comparison reads every
    /// byte and folds the differences without a data-dependent branch (an optimization
    /// barrier keeps the compiler from adding one), so the time taken says nothing about
    /// where a guess first differs from the secret. Only the length can tell, and a length
    /// that differs fails at once; the coordinator's tokens are 64 hex digits (32 random
    /// bytes), whose length is no secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }

    /// Whether an `Authorization` header value is `Bearer <this token>` (the scheme name is
    /// case-insensitive, RFC 7235).
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else { return false };
        let Some(space) = value.iter().position(|&b| b == b' ') else { return false };
        let (scheme, rest) = value.split_at(space);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return false;
        }
        self.matches(rest.trim_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = Token::new("  s3cret-token\n").unwrap();
        assert!(t.matches(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-tokenn", b"S3cret-token", b"s3cret-token s3cret-token"] {
            assert!(!t.matches(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
    }

    #[test]
    fn a_guess_wrong_in_any_one_byte_or_its_length_is_refused() {
        let secret: String = (0..32).map(|i| char::from(b"0123456789abcdef"[(i * 7) % 16])).collect();
        let t = Token::new(&secret).unwrap();
        let s = secret.as_bytes();
        assert!(t.matches(s));
        for i in 0..s.len() {
            for flip in [1u8, 0x20, 0x80] {
                let mut guess = s.to_vec();
                guess[i] ^= flip;
                assert!(!t.matches(&guess), "byte {i} flipped by {flip:#x}");
            }
            assert!(!t.matches(&s[..i]), "a prefix of {i} bytes");
        }
        let mut longer = s.to_vec();
        longer.push(b'0');
        assert!(!t.matches(&longer));
        // A guess that repeats the secret (what a comparison wrapping around the shorter
        // side would accept) is not the secret.
        assert!(!t.matches(&[s, s].concat()));
    }

    #[test]
    fn the_bearer_scheme_is_required_and_case_insensitive() {
        let t = Token::new("abc").unwrap();
        assert!(t.authorizes(Some(b"Bearer abc")));
        assert!(t.authorizes(Some(b"bearer  abc ")));
        assert!(!t.authorizes(Some(b"Basic abc")));
        assert!(!t.authorizes(Some(b"abc")));
        assert!(!t.authorizes(Some(b"Bearer")));
        assert!(!t.authorizes(Some(b"Bearer ")));
        assert!(!t.authorizes(None));
    }

    #[test]
    fn empty_or_unsendable_tokens_are_refused() {
        assert!(matches!(Token::new(" \n "), Err(TokenError::Empty { .. })));
        assert!(matches!(Token::new("a b"), Err(TokenError::Invalid { .. })));
        let dir = std::env::temp_dir().join(format!("zb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = Token::from_file(&empty).unwrap_err();
        assert!(matches!(e, TokenError::Empty { .. }) && e.to_string().contains(&*empty.to_string_lossy()), "{e}");
        let missing = dir.join("missing");
        let e = Token::from_file(&missing).unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        assert_eq!(format!("{:?}", Token::new("topsecret").unwrap()), "Token(<redacted>)");
    }
}
