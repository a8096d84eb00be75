//! ByteStream resource names.
//!
//! * Reads: `[{instance}/]blobs/[{function}/]{hash}/{size}[/{anything}]`
//! * Writes: `[{instance}/]uploads/{uuid}/blobs/[{function}/]{hash}/{size}[/{anything}]`
//!
//! The instance name may have any number of segments (none included), so a name is parsed by
//! finding the first reserved keyword, not by position; an instance segment can therefore never
//! be a keyword. Empty segments (a leading, trailing or doubled `/`) and `.`/`..` are refused.
//! The digest-function segment is present only for functions a hash length cannot identify
//! (`blake3`, `sha256tree`, `gitsha1`, ...); this server only has SHA-256, so such names are
//! refused, while an explicit `sha256/` is tolerated. `compressed-blobs/{compressor}/...` names
//! are refused since no compressor is advertised: UNIMPLEMENTED for a real compressor,
//! INVALID_ARGUMENT otherwise. Every refusal is INVALID_ARGUMENT unless said otherwise.

use scoot_core::Digest;

use crate::error::CasError;

/// Segments that end an instance name.
pub const RESERVED_SEGMENTS: &[&str] = &[
    "blobs",
    "uploads",
    "compressed-blobs",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
];

/// Lowercase names of the REAPI digest functions, as they appear in resource names.
const DIGEST_FUNCTIONS: &[&str] = &[
    "sha256",
    "sha1",
    "md5",
    "vso",
    "sha384",
    "sha512",
    "murmur3",
    "sha256tree",
    "blake3",
    "gitsha1",
];

const COMPRESSORS: &[&str] = &["zstd", "deflate", "brotli"];

/// A blob to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobResource {
    pub instance_name: String,
    pub digest: Digest,
}

/// A blob being uploaded, under a client-chosen upload id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadResource {
    pub instance_name: String,
    pub upload_id: String,
    pub digest: Digest,
}

impl UploadResource {
    /// Identifies the upload regardless of optional trailing metadata, for resumption.
    pub fn key(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.instance_name, self.upload_id, self.digest
        )
    }
}

/// Parses a ByteStream Read resource name.
pub fn parse_read(name: &str) -> Result<BlobResource, CasError> {
    let segments = segments(name)?;
    let at = keyword_at(&segments, name)?;
    match segments[at] {
        "blobs" | "compressed-blobs" => Ok(BlobResource {
            instance_name: segments[..at].join("/"),
            digest: blob_digest(&segments[at..], name)?,
        }),
        "uploads" => Err(invalid(name, "an upload name cannot be read")),
        other => Err(invalid(name, &format!("`{other}` names no blob"))),
    }
}

/// Parses a ByteStream Write resource name.
pub fn parse_write(name: &str) -> Result<UploadResource, CasError> {
    let segments = segments(name)?;
    let at = keyword_at(&segments, name)?;
    if segments[at] != "uploads" {
        return Err(invalid(
            name,
            "expected [instance/]uploads/<uuid>/blobs/<hash>/<size>",
        ));
    }
    let Some(upload_id) = segments.get(at + 1) else {
        return Err(invalid(name, "no upload id after uploads/"));
    };
    if RESERVED_SEGMENTS.contains(upload_id) {
        return Err(invalid(name, "no upload id after uploads/"));
    }
    Ok(UploadResource {
        instance_name: segments[..at].join("/"),
        upload_id: (*upload_id).to_string(),
        digest: blob_digest(&segments[at + 2..], name)?,
    })
}

fn invalid(name: &str, why: &str) -> CasError {
    CasError::invalid_argument(format!("invalid resource name {name:?}: {why}"))
}

fn segments(name: &str) -> Result<Vec<&str>, CasError> {
    if name.is_empty() {
        return Err(CasError::invalid_argument("empty resource name"));
    }
    let segments: Vec<&str> = name.split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return Err(invalid(name, "empty path segment")),
            "." | ".." => return Err(invalid(name, "`.` and `..` segments are not allowed")),
            _ => {}
        }
    }
    Ok(segments)
}

fn keyword_at(segments: &[&str], name: &str) -> Result<usize, CasError> {
    segments
        .iter()
        .position(|s| RESERVED_SEGMENTS.contains(s))
        .ok_or_else(|| invalid(name, "no blobs/ or uploads/ segment"))
}

/// `blobs/[function/]hash/size[/...]` or `compressed-blobs/compressor/...`.
fn blob_digest(tail: &[&str], name: &str) -> Result<Digest, CasError> {
    let rest = match tail.first() {
        Some(&"blobs") => &tail[1..],
        Some(&"compressed-blobs") => {
            return Err(match tail.get(1) {
                Some(c) if COMPRESSORS.contains(c) => CasError::unimplemented(format!(
                    "resource name {name:?}: compressor {c} is not supported (none is advertised)"
                )),
                Some(c) => invalid(name, &format!("unknown compressor {c:?}")),
                None => invalid(name, "no compressor after compressed-blobs/"),
            });
        }
        _ => {
            return Err(invalid(
                name,
                "expected blobs/<hash>/<size> after the upload id",
            ));
        }
    };
    let rest = match rest.first() {
        Some(&"sha256") => &rest[1..],
        Some(f) if DIGEST_FUNCTIONS.contains(f) => {
            return Err(invalid(
                name,
                &format!("digest function {f} is not supported; this server uses sha256"),
            ));
        }
        _ => rest,
    };
    let (Some(hash), Some(size)) = (rest.first(), rest.get(1)) else {
        return Err(invalid(name, "expected <hash>/<size>"));
    };
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(name, "the size is not a number"));
    }
    let size: i64 = size
        .parse()
        .map_err(|_| invalid(name, "the size is not a number"))?;
    Digest::new(*hash, size).map_err(|e| invalid(name, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn digest(size: i64) -> Digest {
        Digest::new(H, size).unwrap()
    }

    #[test]
    fn reads_with_any_instance_name() {
        for (name, instance) in [
            (format!("blobs/{H}/5"), ""),
            (format!("main/blobs/{H}/5"), "main"),
            (format!("a/b/c/blobs/{H}/5"), "a/b/c"),
            (format!("a/blobs/sha256/{H}/5"), "a"),
            (format!("a/blobs/{H}/5/some/metadata"), "a"),
            // A keyword-looking hash after blobs/ does not confuse the search.
            (format!("x-blobs/blobs/{H}/5"), "x-blobs"),
        ] {
            let r = parse_read(&name).unwrap();
            assert_eq!(r.instance_name, instance, "{name}");
            assert_eq!(r.digest, digest(5), "{name}");
        }
    }

    #[test]
    fn writes_with_any_instance_name() {
        for (name, instance) in [
            (format!("uploads/u-1/blobs/{H}/0"), ""),
            (format!("i/uploads/u-1/blobs/{H}/0"), "i"),
            (format!("i/j/uploads/u-1/blobs/sha256/{H}/0/meta"), "i/j"),
        ] {
            let w = parse_write(&name).unwrap();
            assert_eq!(w.instance_name, instance, "{name}");
            assert_eq!(w.upload_id, "u-1");
            assert_eq!(w.digest, digest(0));
        }
        // Trailing metadata does not make another upload.
        assert_eq!(
            parse_write(&format!("uploads/u/blobs/{H}/0"))
                .unwrap()
                .key(),
            parse_write(&format!("uploads/u/blobs/{H}/0/m"))
                .unwrap()
                .key()
        );
        assert_ne!(
            parse_write(&format!("a/uploads/u/blobs/{H}/0"))
                .unwrap()
                .key(),
            parse_write(&format!("b/uploads/u/blobs/{H}/0"))
                .unwrap()
                .key()
        );
    }

    #[test]
    fn bad_names_are_invalid_arguments() {
        for name in [
            String::new(),
            "/".into(),
            format!("/blobs/{H}/5"),
            format!("blobs/{H}/5/"),
            format!("a//blobs/{H}/5"),
            format!("../blobs/{H}/5"),
            format!("a/./blobs/{H}/5"),
            format!("blobs/{H}/5/../x"),
            format!("{H}/5"),
            format!("blobs/{H}"),
            "blobs".into(),
            format!("blobs/{}/5", H.to_uppercase()),
            format!("blobs/{}/5", &H[1..]),
            format!("blobs/{H}/-5"),
            format!("blobs/{H}/+5"),
            format!("blobs/{H}/5x"),
            format!("blobs/{H}/99999999999999999999"),
            format!("blobs/blake3/{H}/5"),
            format!("blobs/md5/{H}/5"),
            format!("uploads/u/blobs/{H}/5"),
            format!("actions/{H}/5"),
            format!("compressed-blobs/identity/{H}/5"),
            format!("compressed-blobs/lz4/{H}/5"),
            "compressed-blobs".into(),
        ] {
            let e = parse_read(&name).unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{name}: {e}");
        }
        for name in [
            format!("blobs/{H}/5"),
            format!("uploads/blobs/{H}/5"),
            format!("uploads/u/{H}/5"),
            "uploads/u".into(),
            "uploads".into(),
            format!("uploads/u/blobs/{H}"),
            format!("i/uploads/u/blobs/sha1/{H}/5"),
            format!("i//uploads/u/blobs/{H}/5"),
        ] {
            let e = parse_write(&name).unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{name}: {e}");
        }
    }

    #[test]
    fn compressed_blobs_are_unimplemented() {
        let e = parse_read(&format!("i/compressed-blobs/zstd/{H}/5")).unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
        let e = parse_write(&format!("uploads/u/compressed-blobs/zstd/{H}/5")).unwrap_err();
        assert_eq!(e.code, Code::Unimplemented);
    }
}
