use std::fmt;
use std::str::FromStr;

/// A content digest as REAPI uses it: lowercase hex SHA-256 and the size in bytes. The size is
/// part of the identity: the same hash with another size is another (invalid) blob.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub hash: String,
    pub size_bytes: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestError(pub String);

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DigestError {}

/// SHA-256 of nothing: the empty blob, which always exists.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl Digest {
    /// A SHA-256 digest: 64 lowercase hex characters and a size of at least 0.
    pub fn new(hash: impl Into<String>, size_bytes: i64) -> Result<Digest, DigestError> {
        let hash = hash.into();
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError(format!(
                "invalid SHA-256 hash {hash:?}: need 64 lowercase hex characters"
            )));
        }
        if size_bytes < 0 {
            return Err(DigestError(format!("invalid size {size_bytes} for {hash}")));
        }
        Ok(Digest { hash, size_bytes })
    }

    pub fn empty() -> Digest {
        Digest {
            hash: EMPTY_SHA256.to_string(),
            size_bytes: 0,
        }
    }

    pub fn is_empty_blob(&self) -> bool {
        self.size_bytes == 0 && self.hash == EMPTY_SHA256
    }
}

/// `<hash>/<size>`, the form bzutil and ByteStream resource names use.
impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hash, self.size_bytes)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (hash, size) = s
            .split_once('/')
            .ok_or_else(|| DigestError(format!("invalid digest {s:?}: expected <hash>/<size>")))?;
        let size = size
            .parse()
            .map_err(|_| DigestError(format!("invalid digest {s:?}: size is not a number")))?;
        Digest::new(hash, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let d: Digest = format!("{EMPTY_SHA256}/0").parse().unwrap();
        assert!(d.is_empty_blob());
        assert_eq!(d.to_string(), format!("{EMPTY_SHA256}/0"));
        for bad in [
            "",
            "abc/1",
            &format!("{EMPTY_SHA256}/-1"),
            &format!("{}/1", EMPTY_SHA256.to_uppercase()),
            EMPTY_SHA256,
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }
}
