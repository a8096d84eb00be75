//! Checking that a bundle holds what its name `bs-<key>.bundle` promises, before a bundlestore
//! keeps it: names are first-come, so a bundle stored under the wrong name would break every
//! later snapshot that names it.
//!
//! Two kinds of names are made by [`crate::GitDb`]:
//!
//! * ingested snapshots, `bs-<commit>.bundle`: the commit's whole history, with no
//!   prerequisites. The bundle is unpacked with `git bundle unbundle` (index-pack hashes every
//!   object and resolves every delta inside the pack, so a header cannot lie about what the
//!   pack holds), then the commit and everything it reaches must be there.
//! * published bundles, `bs-<sha1(rev-list basis..ref, then ref as typed)>.bundle`: the commits
//!   of `basis..ref` only, with the commits they build on as prerequisites, and a thin pack (its
//!   deltas may be against objects of the prerequisites). Its objects are unpacked as far as they
//!   can be without the prerequisites (each one hashed as it is written); commits are never
//!   deltas against a prerequisite, so all of them are there. The key is then recomputed from the
//!   ref's commits down to the prerequisites, with each way the ref could have been typed that
//!   gives the ref name in the header. Trees and files are not checked for such bundles: those
//!   the pack leaves out may be the prerequisites' own.

use scoot_bundlestore::id::{bundle_name, is_sha};

use crate::db::{GitDbConfig, temp_builder, temp_root};
use crate::git::{Git, GitError};

/// Why a bundle was refused, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum BundleCheckError {
    #[error("{bundle} is not a valid git bundle: {reason}")]
    Malformed { bundle: String, reason: String },
    #[error("{bundle} does not hold what its name says: {reason}")]
    Mismatch { bundle: String, reason: String },
    #[error("cannot check bundle {bundle}: {source}")]
    Git {
        bundle: String,
        #[source]
        source: GitError,
    },
    #[error("cannot check bundle {bundle}: {what}: {source}")]
    Io {
        bundle: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl BundleCheckError {
    /// Whether the bundle itself is at fault (rather than the machine checking it).
    pub fn is_bad_bundle(&self) -> bool {
        matches!(
            self,
            BundleCheckError::Malformed { .. } | BundleCheckError::Mismatch { .. }
        )
    }
}

/// What a bundle's header lists.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    prerequisites: Vec<String>,
    /// (object id, ref name)
    refs: Vec<(String, String)>,
    /// Where the pack starts.
    pack_start: usize,
}

fn parse_header(data: &[u8]) -> Result<Header, String> {
    let (version, mut rest) = if let Some(rest) = data.strip_prefix(b"# v2 git bundle\n") {
        (2, rest)
    } else if let Some(rest) = data.strip_prefix(b"# v3 git bundle\n") {
        (3, rest)
    } else {
        return Err("it does not start with \"# v2 git bundle\" or \"# v3 git bundle\"".into());
    };
    let mut header = Header {
        prerequisites: Vec::new(),
        refs: Vec::new(),
        pack_start: 0,
    };
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err("the header does not end with an empty line".into());
        };
        let line = std::str::from_utf8(&rest[..end])
            .map_err(|_| "a header line is not UTF-8".to_string())?;
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        if let Some(capability) = line.strip_prefix('@') {
            // Only sha1 repositories are served, and a filtered bundle would lack objects its
            // commits need.
            if version != 3 || capability != "object-format=sha1" {
                return Err(format!("unsupported header line {line:?}"));
            }
        } else if let Some(prerequisite) = line.strip_prefix('-') {
            let oid = prerequisite.split(' ').next().unwrap_or_default();
            if !is_sha(oid) {
                return Err(format!("bad prerequisite line {line:?}"));
            }
            header.prerequisites.push(oid.to_string());
        } else {
            match line.split_once(' ') {
                Some((oid, name)) if is_sha(oid) && !name.is_empty() => {
                    header.refs.push((oid.to_string(), name.to_string()));
                }
                _ => return Err(format!("bad ref line {line:?}")),
            }
        }
    }
    if header.refs.is_empty() {
        return Err("it lists no refs".into());
    }
    header.pack_start = data.len() - rest.len();
    Ok(header)
}

/// The ways a user could have typed a ref that `git bundle create` wrote as `name`
/// (`master`, `heads/master` and `@` all become `refs/heads/master`).
fn ref_spellings(name: &str) -> Vec<String> {
    let mut spellings = vec![name.to_string()];
    for prefix in ["refs/", "refs/heads/", "refs/tags/", "refs/remotes/"] {
        if let Some(short) = name.strip_prefix(prefix) {
            spellings.push(short.to_string());
        }
    }
    if let Some(remote) = name
        .strip_prefix("refs/remotes/")
        .and_then(|rest| rest.strip_suffix("/HEAD"))
    {
        spellings.push(remote.to_string());
    }
    if name.starts_with("refs/heads/") {
        spellings.push("@".to_string());
    }
    spellings
}

/// Checks that `data` is a bundle that may be stored as `bs-<key>.bundle`: it holds commit
/// `key` with its whole history, or it is the published bundle whose key is `key` (see the
/// module's documentation). Runs git in a scratch repository that is removed afterwards.
pub async fn verify_bundle(
    config: &GitDbConfig,
    key: &str,
    data: &[u8],
) -> Result<(), BundleCheckError> {
    let bundle = bundle_name(key);
    let header = parse_header(data).map_err(|reason| BundleCheckError::Malformed {
        bundle: bundle.clone(),
        reason,
    })?;
    let io = |what: &'static str| {
        let bundle = bundle.clone();
        move |source| BundleCheckError::Io {
            bundle,
            what,
            source,
        }
    };
    let failed = |source| BundleCheckError::Git {
        bundle: bundle.clone(),
        source,
    };
    let scratch = temp_builder("bundle-check")
        .tempdir_in(temp_root(config))
        .map_err(io("cannot create a scratch directory"))?;
    let repo = scratch.path().join("repo.git");
    Git::discovering(&config.git_binary, config.git_timeout, scratch.path())
        .cmd(["init", "--quiet", "--bare"])
        .arg(&repo)
        .run()
        .await
        .map_err(failed)?;
    let git = Git::for_repo(&config.git_binary, config.git_timeout, &repo, &repo);
    let thin = !header.prerequisites.is_empty();
    if thin {
        let pack = scratch.path().join("pack");
        tokio::fs::write(&pack, &data[header.pack_start..])
            .await
            .map_err(io("cannot write the pack"))?;
        // Recover mode unpacks every object it can; only the deltas against the prerequisites'
        // objects are left, so its exit status says nothing here.
        git.cmd(["unpack-objects", "-q", "-r"])
            .stdin_file(&pack)
            .output()
            .await
            .map_err(failed)?;
    } else {
        let file = scratch.path().join("bundle");
        tokio::fs::write(&file, data)
            .await
            .map_err(io("cannot write the bundle"))?;
        let unbundled = git.cmd(["bundle", "unbundle"]).arg(&file).run().await;
        match unbundled {
            Ok(_) => {}
            Err(GitError::Failed { stderr, .. }) => {
                return Err(BundleCheckError::Malformed {
                    bundle,
                    reason: stderr,
                });
            }
            Err(err) => return Err(failed(err)),
        }
    }

    if is_sha(key) && object_type(&git, key).await.map_err(failed)? == "commit" {
        return match complete(&git, key).await.map_err(failed)? {
            None => Ok(()),
            Some(missing) => Err(BundleCheckError::Mismatch {
                bundle,
                reason: format!(
                    "it holds commit {key} but not all of its history and files ({missing})"
                ),
            }),
        };
    }

    for (tip, name) in &header.refs {
        if object_type(&git, tip).await.map_err(failed)?.is_empty() {
            continue;
        }
        let mut rev_list = git.cmd(["rev-list"]);
        if thin {
            // The prerequisites are not here: the walk stops where it reaches them, as
            // `basis..ref` stopped at the basis's history.
            rev_list = rev_list
                .arg("--missing=allow-any")
                .arg(tip)
                .arg("--not")
                .args(&header.prerequisites);
        } else {
            rev_list = rev_list.arg(tip);
        }
        let listed = match rev_list.run().await {
            Ok(listed) => listed,
            Err(GitError::Failed { stderr, .. }) => {
                return Err(BundleCheckError::Mismatch {
                    bundle,
                    reason: format!("the history of {name} cannot be walked: {stderr}"),
                });
            }
            Err(err) => return Err(failed(err)),
        };
        for spelling in ref_spellings(name) {
            let mut keyed = listed.clone();
            keyed.extend_from_slice(spelling.as_bytes());
            if sha1_smol::Sha1::from(&keyed).digest().to_string() != key {
                continue;
            }
            if !thin && let Some(missing) = complete(&git, tip).await.map_err(failed)? {
                return Err(BundleCheckError::Mismatch {
                    bundle,
                    reason: format!("{name} lacks some of its history and files ({missing})"),
                });
            }
            return Ok(());
        }
    }
    let names: Vec<&str> = header.refs.iter().map(|(_, name)| name.as_str()).collect();
    Err(BundleCheckError::Mismatch {
        bundle,
        reason: format!(
            "it does not hold commit {key}, and the commits of its refs ({}) down to its {} \
             prerequisites do not give the key {key} of a published bundle",
            names.join(", "),
            header.prerequisites.len()
        ),
    })
}

/// The type of `object` in the repository, or "" if it is not there.
async fn object_type(git: &Git, object: &str) -> Result<String, GitError> {
    let output = git.cmd(["cat-file", "-t"]).arg(object).output().await?;
    Ok(if output.status.success() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        String::new()
    })
}

/// `None` if every object `tip` reaches is in the repository, else git's complaint.
async fn complete(git: &Git, tip: &str) -> Result<Option<String>, GitError> {
    match git
        .cmd(["rev-list", "--objects", "--quiet"])
        .arg(tip)
        .run()
        .await
    {
        Ok(_) => Ok(None),
        Err(GitError::Failed { stderr, .. }) => Ok(Some(stderr)),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn headers_are_parsed() {
        let data = format!("# v2 git bundle\n-{A} base\n{B} refs/heads/master\n\nPACK");
        let header = parse_header(data.as_bytes()).unwrap();
        assert_eq!(header.prerequisites, [A]);
        assert_eq!(
            header.refs,
            [(B.to_string(), "refs/heads/master".to_string())]
        );
        assert_eq!(&data.as_bytes()[header.pack_start..], b"PACK");
        let v3 = format!("# v3 git bundle\n@object-format=sha1\n{B} HEAD\n\n");
        assert!(
            parse_header(v3.as_bytes())
                .unwrap()
                .prerequisites
                .is_empty()
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        for bad in [
            String::from("PACK"),
            format!("# v2 git bundle\n{B} HEAD\n"),
            String::from("# v2 git bundle\n\nPACK"),
            format!("# v2 git bundle\n-xyz\n{B} HEAD\n\n"),
            format!("# v2 git bundle\n{B}\n\n"),
            format!("# v2 git bundle\n@object-format=sha1\n{B} HEAD\n\n"),
            format!("# v3 git bundle\n@filter=blob:none\n{B} HEAD\n\n"),
        ] {
            assert!(parse_header(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ref_spellings_cover_what_git_bundle_expands() {
        assert_eq!(
            ref_spellings("refs/heads/master"),
            ["refs/heads/master", "heads/master", "master", "@"]
        );
        assert_eq!(ref_spellings("HEAD"), ["HEAD"]);
        assert_eq!(
            ref_spellings("refs/remotes/origin/HEAD"),
            [
                "refs/remotes/origin/HEAD",
                "remotes/origin/HEAD",
                "origin/HEAD",
                "origin"
            ]
        );
    }
}
