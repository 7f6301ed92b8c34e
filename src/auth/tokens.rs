//! Bearer tokens: parsed from `Authorization`, kept as digests, found in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// A token as the gateway keeps it: its SHA-256, so memory holds no secret and every
/// comparison is of equal length.
pub type TokenDigest = [u8; 32];

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
}

/// The value that `presented` matches among `digests`, compared against every one so that
/// timing tells nothing about which matched, or how far.
pub fn find<T: Copy>(digests: &[(TokenDigest, T)], presented: &TokenDigest) -> Option<T> {
    let mut found = None;
    for (d, value) in digests {
        if bool::from(d.ct_eq(presented)) {
            found = Some(*value);
        }
    }
    found
}

/// Reads tokens from a file: one per line, blank lines and `#` comments ignored.
pub fn read_tokens_file(path: &Path) -> std::io::Result<Vec<Secret>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Secret::new)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_in_any_case() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn tokens_are_found_by_digest() {
        let table = [(digest("alpha"), 0), (digest("beta"), 1)];
        assert_eq!(find(&table, &digest("beta")), Some(1));
        assert_eq!(find(&table, &digest("gamma")), None);
    }

    #[test]
    fn token_files_skip_comments() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "# team tokens\nabc\n\n  def  \n").unwrap();
        let t = read_tokens_file(f.path()).unwrap();
        assert_eq!(
            t.iter().map(Secret::expose).collect::<Vec<_>>(),
            vec!["abc", "def"]
        );
    }
}
