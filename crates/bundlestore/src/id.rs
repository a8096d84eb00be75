//! Snapshot ids: `<backend>-<kind>-<backend-specific parts>`.
//!
//! * `local-<kind>-<sha>`
//! * `stream-<kind>-<stream name>-<sha>` (the stream name may contain `-`)
//! * `tags-<kind>-<tag set name>-<sha>`
//! * `bs-<kind>-<bundle key>-<stream name>-<sha>` (the stream name may be empty:
//!   `bs-fs-<sha>--<sha>`)
//!
//! Kinds: `fs`, a file tree (git tree object); `gc`, a git commit. Shas are 40 lowercase hex
//! characters; a bundle key names the bundle `bs-<key>.bundle` in a bundlestore.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A file tree: the sha is a git tree.
    Fs,
    /// A git commit.
    Gc,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fs => "fs",
            Kind::Gc => "gc",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotId {
    Local {
        kind: Kind,
        sha: String,
    },
    Stream {
        kind: Kind,
        stream: String,
        sha: String,
    },
    Tags {
        kind: Kind,
        name: String,
        sha: String,
    },
    Bundlestore {
        kind: Kind,
        bundle_key: String,
        stream: String,
        sha: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot id {id:?}: {reason}")]
pub struct IdError {
    pub id: String,
    pub reason: String,
}

pub fn is_sha(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl SnapshotId {
    pub fn kind(&self) -> Kind {
        match self {
            SnapshotId::Local { kind, .. }
            | SnapshotId::Stream { kind, .. }
            | SnapshotId::Tags { kind, .. }
            | SnapshotId::Bundlestore { kind, .. } => *kind,
        }
    }

    /// The git object (tree or commit) the snapshot is.
    pub fn sha(&self) -> &str {
        match self {
            SnapshotId::Local { sha, .. }
            | SnapshotId::Stream { sha, .. }
            | SnapshotId::Tags { sha, .. }
            | SnapshotId::Bundlestore { sha, .. } => sha,
        }
    }

    /// The bundle holding the snapshot's objects, for bundlestore snapshots.
    pub fn bundle_name(&self) -> Option<String> {
        match self {
            SnapshotId::Bundlestore { bundle_key, .. } => Some(bundle_name(bundle_key)),
            _ => None,
        }
    }
}

/// `bs-<key>.bundle`, the store name of a bundle.
pub fn bundle_name(key: &str) -> String {
    format!("bs-{key}.bundle")
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotId::Local { kind, sha } => write!(f, "local-{}-{sha}", kind.as_str()),
            SnapshotId::Stream { kind, stream, sha } => {
                write!(f, "stream-{}-{stream}-{sha}", kind.as_str())
            }
            SnapshotId::Tags { kind, name, sha } => {
                write!(f, "tags-{}-{name}-{sha}", kind.as_str())
            }
            SnapshotId::Bundlestore {
                kind,
                bundle_key,
                stream,
                sha,
            } => {
                write!(f, "bs-{}-{bundle_key}-{stream}-{sha}", kind.as_str())
            }
        }
    }
}

impl FromStr for SnapshotId {
    type Err = IdError;

    fn from_str(id: &str) -> Result<SnapshotId, IdError> {
        let err = |reason: &str| IdError {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let (backend, rest) = id.split_once('-').ok_or_else(|| err("no backend prefix"))?;
        let (kind, rest) = rest.split_once('-').ok_or_else(|| err("no kind"))?;
        let kind = match kind {
            "fs" => Kind::Fs,
            "gc" => Kind::Gc,
            _ => return Err(err("kind must be fs or gc")),
        };
        let sha_last = |rest: &str| -> Result<(String, String), IdError> {
            let (head, sha) = rest.rsplit_once('-').ok_or_else(|| err("missing parts"))?;
            if !is_sha(sha) {
                return Err(err("the sha must be 40 lowercase hex characters"));
            }
            Ok((head.to_string(), sha.to_string()))
        };
        match backend {
            "local" => {
                if !is_sha(rest) {
                    return Err(err("the sha must be 40 lowercase hex characters"));
                }
                Ok(SnapshotId::Local {
                    kind,
                    sha: rest.to_string(),
                })
            }
            "stream" | "tags" => {
                let (name, sha) = sha_last(rest)?;
                if name.is_empty() {
                    return Err(err("empty stream or tag set name"));
                }
                Ok(if backend == "stream" {
                    SnapshotId::Stream {
                        kind,
                        stream: name,
                        sha,
                    }
                } else {
                    SnapshotId::Tags { kind, name, sha }
                })
            }
            "bs" => {
                let (head, sha) = sha_last(rest)?;
                let (bundle_key, stream) = head
                    .split_once('-')
                    .ok_or_else(|| err("missing bundle key"))?;
                if !is_sha(bundle_key) {
                    return Err(err("the bundle key must be 40 lowercase hex characters"));
                }
                Ok(SnapshotId::Bundlestore {
                    kind,
                    bundle_key: bundle_key.to_string(),
                    stream: stream.to_string(),
                    sha,
                })
            }
            _ => Err(err("unknown backend (local, stream, tags or bs)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "fedcba9876543210fedcba9876543210fedcba98";

    #[test]
    fn round_trips() {
        for id in [
            format!("local-fs-{A}"),
            format!("stream-gc-sm-{A}"),
            format!("stream-gc-my-long-stream-{A}"),
            format!("tags-fs-release-{A}"),
            format!("bs-fs-{A}--{A}"),
            format!("bs-gc-{B}-master-{A}"),
            format!("bs-gc-{B}-a-b-{A}"),
        ] {
            let parsed: SnapshotId = id.parse().unwrap();
            assert_eq!(parsed.to_string(), id);
        }
    }

    #[test]
    fn parts() {
        let id: SnapshotId = format!("bs-gc-{B}-a-b-{A}").parse().unwrap();
        assert_eq!(id.kind(), Kind::Gc);
        assert_eq!(id.sha(), A);
        assert_eq!(id.bundle_name(), Some(format!("bs-{B}.bundle")));
        let id: SnapshotId = format!("stream-gc-x-y-{A}").parse().unwrap();
        assert_eq!(
            id,
            SnapshotId::Stream {
                kind: Kind::Gc,
                stream: "x-y".into(),
                sha: A.into()
            }
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "".to_string(),
            "local".into(),
            format!("local-xx-{A}"),
            "local-fs-123".into(),
            format!("local-fs-{}", A.to_uppercase()),
            format!("nfs-fs-{A}"),
            format!("stream-fs--{A}"),
            format!("bs-fs-123-{A}"),
            format!("bs-fs-{A}"),
        ] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad}");
        }
    }
}
