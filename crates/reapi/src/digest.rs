//! Digests on the wire: conversion between `v2::Digest` and [`Digest`], and the digest-function
//! check every request goes through. Only SHA-256 is served.

use scoot_core::Digest;
use scoot_proto::reapi::v2;

use crate::Invalid;

/// The only digest function served.
pub const DIGEST_FUNCTION: v2::digest_function::Value = v2::digest_function::Value::Sha256;

/// A wire digest as a validated [`Digest`] (64 lowercase hex characters, size ≥ 0); `what`
/// names the field in the error.
pub fn from_proto(digest: Option<&v2::Digest>, what: &str) -> Result<Digest, Invalid> {
    let digest = digest.ok_or_else(|| Invalid(format!("{what}: no digest given")))?;
    Digest::new(digest.hash.clone(), digest.size_bytes).map_err(|e| Invalid(format!("{what}: {e}")))
}

/// A digest that must be present (proto3 message fields are optional on the wire).
pub fn required(digest: &Option<v2::Digest>, what: &str) -> Result<Digest, Invalid> {
    from_proto(digest.as_ref(), what)
}

pub fn to_proto(digest: &Digest) -> v2::Digest {
    v2::Digest {
        hash: digest.hash.clone(),
        size_bytes: digest.size_bytes,
    }
}

/// Checks a request's `digest_function`: unset (inferred from the hash length, which must then
/// be SHA-256's) or SHA-256.
pub fn check_function(value: i32) -> Result<(), Invalid> {
    if value == v2::digest_function::Value::Unknown as i32 || value == DIGEST_FUNCTION as i32 {
        return Ok(());
    }
    let name = v2::digest_function::Value::try_from(value)
        .map(|v| v.as_str_name().to_string())
        .unwrap_or_else(|_| value.to_string());
    Err(Invalid(format!(
        "digest function {name} is not supported; this server uses SHA256"
    )))
}

/// The size of a validated digest as an unsigned count.
pub fn size(digest: &Digest) -> u64 {
    u64::try_from(digest.size_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use scoot_core::EMPTY_SHA256;

    use super::*;

    #[test]
    fn conversions_validate() {
        let ok = v2::Digest {
            hash: EMPTY_SHA256.into(),
            size_bytes: 0,
        };
        assert!(from_proto(Some(&ok), "d").unwrap().is_empty_blob());
        assert_eq!(to_proto(&from_proto(Some(&ok), "d").unwrap()), ok);
        for bad in [
            v2::Digest {
                hash: EMPTY_SHA256.to_uppercase(),
                size_bytes: 0,
            },
            v2::Digest {
                hash: EMPTY_SHA256.into(),
                size_bytes: -1,
            },
            v2::Digest {
                hash: "abc".into(),
                size_bytes: 3,
            },
        ] {
            assert!(from_proto(Some(&bad), "d").is_err(), "{bad:?}");
        }
        let e = required(&None, "Action.input_root_digest").unwrap_err();
        assert_eq!(e.0, "Action.input_root_digest: no digest given");
    }

    #[test]
    fn only_sha256_is_accepted() {
        assert!(check_function(0).is_ok());
        assert!(check_function(1).is_ok());
        let e = check_function(v2::digest_function::Value::Blake3 as i32).unwrap_err();
        assert!(e.0.contains("BLAKE3"), "{e}");
        assert!(check_function(99).is_err());
    }
}
