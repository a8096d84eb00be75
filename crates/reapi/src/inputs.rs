//! The one check of an action's inputs, shared by the scheduler (before it queues an action) and
//! the worker (before it runs one): the Command is read and validated, the input tree is walked
//! breadth first, a level at a time, each Directory validated once at the shallowest depth it
//! occurs (where its symlinks are likeliest to climb out), and every blob that cannot be had is
//! reported at once.
//!
//! Where the blobs come from is the caller's [`BlobSource`]: the scheduler reads its own blob
//! store in-process, a worker reads the CAS over the network in batches and counts the files it
//! has cached as present.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use bytes::Bytes;
use prost::Message;
use scoot_core::Digest;
use scoot_proto::reapi::v2;

use crate::Invalid;
use crate::digest::{from_proto, size};
use crate::platform::{self, Requirements};
use crate::rules::{self, CommandLayout};
use crate::status::missing_blobs_message;

/// Largest Action, Command or Directory accepted, in bytes. These are read whole into memory
/// and the size comes from the client; 16 MiB is the gRPC message size the CAS accepts and the
/// largest Directory its GetTree serves, so nothing larger could be uploaded in a batch anyway.
pub const MAX_MESSAGE_BYTES: u64 = 16 << 20;

/// Where the check reads messages and looks for files.
pub trait BlobSource: Sync {
    type Error: Send;

    /// Reads whole blobs, none larger than [`MAX_MESSAGE_BYTES`]; blobs the CAS lacks are left
    /// out of the answer (the empty blob always exists: it is the empty Directory).
    fn read(
        &self,
        digests: &[Digest],
    ) -> impl Future<Output = Result<Vec<(Digest, Bytes)>, Self::Error>> + Send;

    /// Which of the input files `files` cannot be had.
    fn find_missing(
        &self,
        files: &[Digest],
    ) -> impl Future<Output = Result<Vec<Digest>, Self::Error>> + Send;
}

/// Why an action's inputs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputsError<E> {
    /// INVALID_ARGUMENT.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// FAILED_PRECONDITION (see [`missing_blobs_status`](crate::status::missing_blobs_status)):
    /// each blob the CAS lacks, with what it was meant to be.
    #[error("{}", missing_blobs_message(.0))]
    Missing(Vec<(Digest, &'static str)>),
    /// The source failed.
    #[error("{0}")]
    Source(E),
}

/// An action's Command and input tree, checked.
#[derive(Clone, Debug)]
pub struct CheckedInputs {
    pub command: v2::Command,
    pub layout: CommandLayout,
    /// What the action's platform asks for.
    pub platform: Requirements,
    pub tree: InputTree,
}

/// Every Directory of an input root, each validated.
#[derive(Clone, Debug, PartialEq)]
pub struct InputTree {
    pub root: Digest,
    pub directories: HashMap<Digest, v2::Directory>,
    /// Every distinct file digest in the tree except the empty blob, in the order first met
    /// (breadth first).
    pub files: Vec<Digest>,
}

/// Reads and decodes the Action `digest` names.
pub async fn read_action<S: BlobSource>(
    source: &S,
    digest: &Digest,
) -> Result<v2::Action, InputsError<S::Error>> {
    read_message(source, digest, "the Action")
        .await?
        .ok_or_else(|| InputsError::Missing(vec![(digest.clone(), "the Action")]))
}

/// Checks that `action` names its Command and input root, that both are well formed and that
/// every blob they refer to can be had. Stops at the first invalid message; otherwise reports
/// every missing blob together.
pub async fn check_inputs<S: BlobSource>(
    source: &S,
    action: &v2::Action,
) -> Result<CheckedInputs, InputsError<S::Error>> {
    let command_digest = from_proto(action.command_digest.as_ref(), "Action.command_digest")?;
    let root = from_proto(
        action.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )?;
    let (command, walked) = futures::join!(
        read_message::<_, v2::Command>(source, &command_digest, "the Command"),
        walk(source, root),
    );
    let command = command?;
    let layout = command.as_ref().map(rules::validate_command).transpose()?;
    let platform = match &command {
        Some(command) => platform::parse(&platform::action_properties(action, command))?,
        None => Requirements::default(),
    };
    let (tree, missing_directories) = walked?;

    let mut missing = Vec::new();
    if command.is_none() {
        missing.push((command_digest, "the Command"));
    }
    missing.extend(
        missing_directories
            .into_iter()
            .map(|d| (d, "an input directory")),
    );
    let absent = source
        .find_missing(&tree.files)
        .await
        .map_err(InputsError::Source)?;
    missing.extend(absent.into_iter().map(|d| (d, "an input file")));
    match (command, layout) {
        (Some(command), Some(layout)) if missing.is_empty() => Ok(CheckedInputs {
            command,
            layout,
            platform,
            tree,
        }),
        _ => Err(InputsError::Missing(missing)),
    }
}

/// Reads every Directory under `root`, a level per call to the source, validating each; returns
/// the tree and the Directories the source lacks.
async fn walk<S: BlobSource>(
    source: &S,
    root: Digest,
) -> Result<(InputTree, Vec<Digest>), InputsError<S::Error>> {
    let mut tree = InputTree {
        root: root.clone(),
        directories: HashMap::new(),
        files: Vec::new(),
    };
    let mut missing = Vec::new();
    let mut seen_directories = HashSet::from([root.clone()]);
    let mut seen_files = HashSet::new();
    let mut level = vec![root];
    let mut depth = 0;
    while !level.is_empty() {
        for digest in &level {
            check_size(digest, "an input directory")?;
        }
        let mut read: HashMap<Digest, Bytes> = source
            .read(&level)
            .await
            .map_err(InputsError::Source)?
            .into_iter()
            .collect();
        let mut next = Vec::new();
        for digest in level {
            let Some(data) = read.remove(&digest) else {
                missing.push(digest);
                continue;
            };
            let directory = decode::<v2::Directory>(&digest, data, "an input directory")?;
            let refs = rules::validate_directory(&directory, depth)
                .map_err(|e| Invalid(format!("input directory {digest}: {e}")))?;
            for file in refs.files {
                if !file.is_empty_blob() && seen_files.insert(file.clone()) {
                    tree.files.push(file);
                }
            }
            next.extend(
                refs.directories
                    .into_iter()
                    .filter(|child| seen_directories.insert(child.clone())),
            );
            tree.directories.insert(digest, directory);
        }
        level = next;
        depth += 1;
    }
    Ok((tree, missing))
}

/// Reads and decodes one message; `None` when the source lacks it.
async fn read_message<S: BlobSource, M: Message + Default>(
    source: &S,
    digest: &Digest,
    what: &str,
) -> Result<Option<M>, InputsError<S::Error>> {
    check_size(digest, what)?;
    let read = source
        .read(std::slice::from_ref(digest))
        .await
        .map_err(InputsError::Source)?;
    match read.into_iter().find(|(d, _)| d == digest) {
        Some((_, data)) => Ok(Some(decode(digest, data, what)?)),
        None => Ok(None),
    }
}

fn check_size(digest: &Digest, what: &str) -> Result<(), Invalid> {
    if size(digest) > MAX_MESSAGE_BYTES {
        return Err(Invalid(format!(
            "{what} blobs/{digest} is larger than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    Ok(())
}

fn decode<M: Message + Default>(digest: &Digest, data: Bytes, what: &str) -> Result<M, Invalid> {
    M::decode(data).map_err(|e| Invalid(format!("{what} blobs/{digest} cannot be decoded: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::digest::to_proto;

    pub(crate) fn digest_of(data: &[u8]) -> Digest {
        Digest::new(hex::encode(Sha256::digest(data)), data.len() as i64).unwrap()
    }

    /// A CAS in a map; `reads` records each call's digests, to show the walk goes by levels.
    #[derive(Default)]
    struct Blobs {
        blobs: HashMap<Digest, Bytes>,
        reads: std::sync::Mutex<Vec<Vec<Digest>>>,
    }

    impl Blobs {
        fn put(&mut self, message: &impl Message) -> Digest {
            let data = Bytes::from(message.encode_to_vec());
            let digest = digest_of(&data);
            self.blobs.insert(digest.clone(), data);
            digest
        }

        fn put_file(&mut self, content: &[u8]) -> Digest {
            let digest = digest_of(content);
            self.blobs
                .insert(digest.clone(), Bytes::copy_from_slice(content));
            digest
        }
    }

    impl BlobSource for Blobs {
        type Error = Infallible;

        async fn read(&self, digests: &[Digest]) -> Result<Vec<(Digest, Bytes)>, Infallible> {
            if let Ok(mut reads) = self.reads.lock() {
                reads.push(digests.to_vec());
            }
            Ok(digests
                .iter()
                .filter_map(|d| match self.blobs.get(d) {
                    Some(data) => Some((d.clone(), data.clone())),
                    None => d.is_empty_blob().then(|| (d.clone(), Bytes::new())),
                })
                .collect())
        }

        async fn find_missing(&self, files: &[Digest]) -> Result<Vec<Digest>, Infallible> {
            Ok(files
                .iter()
                .filter(|d| !self.blobs.contains_key(d))
                .cloned()
                .collect())
        }
    }

    fn file(name: &str, digest: &Digest) -> v2::FileNode {
        v2::FileNode {
            name: name.into(),
            digest: Some(to_proto(digest)),
            ..Default::default()
        }
    }

    fn dir_node(name: &str, digest: &Digest) -> v2::DirectoryNode {
        v2::DirectoryNode {
            name: name.into(),
            digest: Some(to_proto(digest)),
        }
    }

    fn action(command: &Digest, root: Option<&Digest>) -> v2::Action {
        v2::Action {
            command_digest: Some(to_proto(command)),
            input_root_digest: root.map(to_proto),
            ..Default::default()
        }
    }

    fn true_command() -> v2::Command {
        v2::Command {
            arguments: vec!["true".into()],
            ..Default::default()
        }
    }

    fn missing_of(error: InputsError<Infallible>) -> Vec<(Digest, &'static str)> {
        match error {
            InputsError::Missing(missing) => missing,
            other => panic!("expected missing blobs, got {other:?}"),
        }
    }

    fn invalid_of(error: InputsError<Infallible>) -> String {
        match error {
            InputsError::Invalid(Invalid(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_tree_is_walked_by_levels_and_lists_distinct_files() {
        let mut cas = Blobs::default();
        let shared = cas.put_file(b"shared");
        let other = cas.put_file(b"other");
        let leaf = cas.put(&v2::Directory {
            files: vec![file("x", &shared), file("empty", &Digest::empty())],
            ..Default::default()
        });
        let root = cas.put(&v2::Directory {
            files: vec![file("top", &shared), file("other", &other)],
            directories: vec![dir_node("a", &leaf), dir_node("b", &leaf)],
            ..Default::default()
        });
        let command = cas.put(&true_command());
        let checked = check_inputs(&cas, &action(&command, Some(&root)))
            .await
            .unwrap();
        assert_eq!(checked.tree.root, root);
        assert_eq!(checked.tree.files, vec![shared, other]);
        assert_eq!(checked.tree.directories.len(), 2);
        assert_eq!(checked.platform, Requirements::default());
        let reads = cas.reads.lock().unwrap().clone();
        // The Command and each level of the tree, the repeated leaf read once.
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert!(reads.contains(&vec![root.clone()]) && reads.contains(&vec![leaf]));
    }

    #[tokio::test]
    async fn every_missing_blob_is_reported_together() {
        let mut cas = Blobs::default();
        let ghost_file = digest_of(b"never uploaded");
        let ghost_dir = digest_of(b"no such directory");
        let root = cas.put(&v2::Directory {
            files: vec![file("f", &ghost_file)],
            directories: vec![dir_node("d", &ghost_dir)],
            ..Default::default()
        });
        let ghost_command = digest_of(b"no such command");
        let error = check_inputs(&cas, &action(&ghost_command, Some(&root)))
            .await
            .unwrap_err();
        assert_eq!(
            missing_of(error),
            vec![
                (ghost_command, "the Command"),
                (ghost_dir, "an input directory"),
                (ghost_file, "an input file"),
            ]
        );
        let ghost_action = digest_of(b"no such action");
        let error = read_action(&cas, &ghost_action).await.unwrap_err();
        assert_eq!(missing_of(error), vec![(ghost_action, "the Action")]);
    }

    #[tokio::test]
    async fn an_action_without_an_input_root_is_invalid() {
        let mut cas = Blobs::default();
        let command = cas.put(&true_command());
        let error = check_inputs(&cas, &action(&command, None))
            .await
            .unwrap_err();
        assert_eq!(
            invalid_of(error),
            "Action.input_root_digest: no digest given"
        );
        // The empty input root is named by the empty Directory's digest, the empty blob.
        let empty = Digest::empty();
        let checked = check_inputs(&cas, &action(&command, Some(&empty)))
            .await
            .unwrap();
        assert!(checked.tree.files.is_empty());
    }

    #[tokio::test]
    async fn messages_larger_than_the_limit_are_invalid_before_any_read() {
        let mut cas = Blobs::default();
        let command = cas.put(&true_command());
        let huge = Digest::new(digest_of(b"huge").hash, MAX_MESSAGE_BYTES as i64 + 1).unwrap();
        let error = check_inputs(&cas, &action(&command, Some(&huge)))
            .await
            .unwrap_err();
        assert!(invalid_of(error).contains("is larger than 16777216 bytes"));
        let error = check_inputs(&cas, &action(&huge, Some(&Digest::empty())))
            .await
            .unwrap_err();
        assert!(invalid_of(error).contains("the Command"));
        let error = read_action(&cas, &huge).await.unwrap_err();
        assert!(invalid_of(error).contains("the Action"));
        assert!(cas.reads.lock().unwrap().iter().all(|r| !r.contains(&huge)));
    }

    #[tokio::test]
    async fn an_invalid_directory_or_command_is_named() {
        let mut cas = Blobs::default();
        let bad = cas.put(&v2::Directory {
            files: vec![file("..", &Digest::empty())],
            ..Default::default()
        });
        let command = cas.put(&true_command());
        let error = check_inputs(&cas, &action(&command, Some(&bad)))
            .await
            .unwrap_err();
        let message = invalid_of(error);
        assert!(
            message.contains(&bad.to_string()) && message.contains("\"..\""),
            "{message}"
        );
        let escaping = cas.put(&v2::Command {
            output_files: vec!["../out".into()],
            ..true_command()
        });
        let error = check_inputs(&cas, &action(&escaping, Some(&Digest::empty())))
            .await
            .unwrap_err();
        assert!(invalid_of(error).contains("leaves the input root"));
        let not_a_command = cas.put_file(b"\xff\xff");
        let error = check_inputs(&cas, &action(&not_a_command, Some(&Digest::empty())))
            .await
            .unwrap_err();
        assert!(invalid_of(error).contains("cannot be decoded"));
    }
}
