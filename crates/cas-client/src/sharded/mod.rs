//! A CAS spread over several servers (the cluster's apiservers): [`ShardedCas`].
//!
//! Each blob, and each action-cache entry (by its action digest), belongs to the first R
//! servers ("shards") of its rendezvous preference order ([`Ring`]); every process given the same
//! list of addresses and the same R agrees on it without talking to the others.
//!
//! * **Writes** go to the first R shards of the preference order, in parallel. A shard that
//!   fails (unreachable, timed out, out of space, ...) is replaced by the next shard in the
//!   order, so a write succeeds once R shards acknowledged it, and an acknowledged blob is on R
//!   shards even while one of its owners is down. When fewer than R shards can take it, the
//!   write fails (UNAVAILABLE): an acknowledged blob is never on fewer than R shards.
//! * **Reads** try the shards in preference order and move to the next on NOT_FOUND or a
//!   failure (DATA_LOSS included: another replica may be intact), to the end of the list, so a
//!   blob written past a down owner, or placed before a shard was added, is still found.
//! * **FindMissingBlobs** asks, in parallel, each blob's owners; a shard that fails is replaced
//!   by the next in the blob's order until R shards answered. A blob is missing when none of the
//!   R shards that answered has it; present only when one of them does (so it is readable). A
//!   blob no shard could answer for fails the call (UNAVAILABLE) rather than be guessed.
//! * **The action cache** is read from the first shard in the order that has the entry, stopping
//!   after R shards said they have none, and asked *unchecked*
//!   ([`scoot_reapi::UNCHECKED_RESULT_METADATA`]): the caller checks the entry's blobs, which
//!   live on other shards.
//!
//! A shard that failed is tried after the healthy ones for a short while ([`SUSPECT_FOR`]), so
//! a dead machine does not cost every call a connection timeout. With a single shard every call
//! goes straight to its [`CasClient`], exactly as a plain client does.

mod store;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use prost::Message;
use scoot_core::Digest;
use scoot_proto::reapi::v2;
use scoot_security::ClientSecurity;
use tonic::Code;

use crate::ring::Ring;
use crate::write::Payload;
use crate::{BlobsRead, CasClient, ClientError};

pub use store::ShardedBlobStore;

/// Copies of each blob when none is asked for.
pub const DEFAULT_REPLICAS: usize = 2;
/// How long a shard that could not be reached is tried after the others.
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// The shards of a CAS, by address, and how many of them hold each blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    addrs: Vec<String>,
    replicas: usize,
}

/// Why a list of shards cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardSpecError {
    #[error("no CAS shard addresses given")]
    Empty,
    #[error("an empty address in the list of CAS shards")]
    EmptyAddress,
    #[error("the CAS shard {0} is listed twice")]
    Duplicate(String),
    #[error("each blob needs at least one replica")]
    NoReplicas,
    #[error(
        "{replicas} replicas of each blob asked for, but only {shards} CAS shards given: a \
         blob's replicas are on different shards, so there can be at most {shards}"
    )]
    TooManyReplicas { replicas: usize, shards: usize },
}

impl ShardSpec {
    /// `addrs` (each as [`CasClient::connect`] takes it, and identifying its shard: keep the
    /// spelling the same everywhere) holding `replicas` copies of each blob.
    pub fn new(addrs: Vec<String>, replicas: usize) -> Result<ShardSpec, ShardSpecError> {
        if addrs.is_empty() {
            return Err(ShardSpecError::Empty);
        }
        let mut seen = HashSet::new();
        for addr in &addrs {
            if addr.is_empty() {
                return Err(ShardSpecError::EmptyAddress);
            }
            if !seen.insert(addr) {
                return Err(ShardSpecError::Duplicate(addr.clone()));
            }
        }
        if replicas == 0 {
            return Err(ShardSpecError::NoReplicas);
        }
        if replicas > addrs.len() {
            return Err(ShardSpecError::TooManyReplicas {
                replicas,
                shards: addrs.len(),
            });
        }
        Ok(ShardSpec { addrs, replicas })
    }

    /// A comma-separated list of addresses (`host:port,host:port`; spaces around them are
    /// ignored).
    pub fn parse(list: &str, replicas: usize) -> Result<ShardSpec, ShardSpecError> {
        if list.trim().is_empty() {
            return Err(ShardSpecError::Empty);
        }
        ShardSpec::new(
            list.split(',').map(|a| a.trim().to_string()).collect(),
            replicas,
        )
    }

    /// One server holding everything: a plain CAS.
    pub fn single(addr: impl Into<String>) -> ShardSpec {
        ShardSpec {
            addrs: vec![addr.into()],
            replicas: 1,
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }
}

/// A CAS and action cache spread over shards (see the module documentation). Cloning is cheap;
/// clones share connections and what is known of the shards' health.
#[derive(Clone, Debug)]
pub struct ShardedCas {
    /// One per shard, in the spec's order, for this instance name.
    clients: Vec<CasClient>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    spec: ShardSpec,
    ring: Ring,
    /// Per shard: until when it is tried last.
    suspect_until: Mutex<Vec<Option<Instant>>>,
}

/// A failure that says something about the shard rather than the request: another replica
/// may do better.
fn shard_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::DataLoss
            | Code::Unimplemented
    )
}

/// A failure that says the shard cannot be reached at all.
fn unreachable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

fn no_shard_answered(what: &str, last: Option<ClientError>) -> ClientError {
    let cause = last.map_or_else(|| "no shard left to ask".to_string(), |e| e.to_string());
    ClientError::new(
        Code::Unavailable,
        format!("no CAS shard could answer for {what}: {cause}"),
    )
}

/// `digests` without the empty blob (always present) and without repeats, in order.
fn distinct(digests: &[Digest]) -> Vec<Digest> {
    let mut seen = HashSet::new();
    digests
        .iter()
        .filter(|d| !d.is_empty_blob() && seen.insert(*d))
        .cloned()
        .collect()
}

/// Asks of one round: shard → indices of the keys it is asked about.
type Asks = HashMap<usize, Vec<usize>>;

/// One key's walk down its preference order.
struct Walk {
    order: Vec<usize>,
    next: usize,
}

impl Walk {
    /// The next shard not known to have failed during this call.
    fn next_shard(&mut self, failed: &HashSet<usize>) -> Option<usize> {
        while let Some(&shard) = self.order.get(self.next) {
            self.next += 1;
            if !failed.contains(&shard) {
                return Some(shard);
            }
        }
        None
    }
}

impl ShardedCas {
    /// Clients for every shard of `spec`, connecting on first use (see
    /// [`CasClient::connect_lazy`]). Must be called within a tokio runtime.
    pub fn connect_lazy(
        spec: &ShardSpec,
        instance: &str,
        security: &ClientSecurity,
    ) -> Result<ShardedCas, ClientError> {
        let clients = spec
            .addrs
            .iter()
            .map(|addr| CasClient::connect_lazy(addr, instance, security))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardedCas::from_clients(spec, clients))
    }

    /// Over existing clients, one per address of `spec` in its order.
    pub(crate) fn from_clients(spec: &ShardSpec, clients: Vec<CasClient>) -> ShardedCas {
        ShardedCas {
            shared: Arc::new(Shared {
                ring: Ring::new(&spec.addrs),
                suspect_until: Mutex::new(vec![None; clients.len()]),
                spec: spec.clone(),
            }),
            clients,
        }
    }

    /// The same shards, for another instance name.
    pub fn with_instance(&self, instance: &str) -> ShardedCas {
        ShardedCas {
            clients: self
                .clients
                .iter()
                .map(|c| c.with_instance(instance))
                .collect(),
            shared: self.shared.clone(),
        }
    }

    pub fn instance(&self) -> &str {
        self.clients.first().map_or("", CasClient::instance)
    }

    pub fn spec(&self) -> &ShardSpec {
        &self.shared.spec
    }

    fn replicas(&self) -> usize {
        self.shared.spec.replicas
    }

    /// The client of the only shard, when there is just one.
    fn only(&self) -> Option<&CasClient> {
        match self.clients.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    fn suspects(&self) -> MutexGuard<'_, Vec<Option<Instant>>> {
        self.shared
            .suspect_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `digest`'s preference order, shards that recently failed moved to the end.
    fn walk(&self, digest: &Digest) -> Walk {
        let mut order = self.shared.ring.preference(digest);
        let now = Instant::now();
        let suspects = self.suspects();
        order.sort_by_key(|&shard| suspects[shard].is_some_and(|until| until > now));
        Walk { order, next: 0 }
    }

    fn shard_failed(&self, shard: usize, error: &ClientError) {
        let addr = &self.shared.spec.addrs[shard];
        if !unreachable(error.code) {
            tracing::warn!(shard = %addr, %error, "CAS shard failed; trying another replica");
            return;
        }
        let newly = {
            let mut suspects = self.suspects();
            let newly = suspects[shard].is_none_or(|until| until <= Instant::now());
            suspects[shard] = Some(Instant::now() + SUSPECT_FOR);
            newly
        };
        if newly {
            tracing::warn!(shard = %addr, %error, "CAS shard unreachable; using the other replicas");
        }
    }

    fn shard_answered(&self, shard: usize) {
        let was_suspect = self.suspects()[shard].take().is_some();
        if was_suspect {
            tracing::info!(shard = %self.shared.spec.addrs[shard], "CAS shard answers again");
        }
    }

    /// The digests no shard has (see the module documentation), each once, in request order.
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        if let Some(only) = self.only() {
            return only.find_missing(digests).await;
        }
        let wanted = distinct(digests);
        let mut walks: Vec<Walk> = wanted.iter().map(|d| self.walk(d)).collect();
        let mut answers = vec![0usize; wanted.len()];
        let mut present = vec![false; wanted.len()];
        let mut failed = HashSet::new();
        let mut last_error = None;
        loop {
            let mut asks = Asks::new();
            for (i, walk) in walks.iter_mut().enumerate() {
                if present[i] {
                    continue;
                }
                // Shards already asked this round count as answers to come.
                for _ in answers[i]..self.replicas() {
                    match walk.next_shard(&failed) {
                        Some(shard) => asks.entry(shard).or_default().push(i),
                        None => break,
                    }
                }
            }
            if asks.is_empty() {
                break;
            }
            let calls = asks.into_iter().map(|(shard, keys)| {
                let digests: Vec<Digest> = keys.iter().map(|&i| wanted[i].clone()).collect();
                async move {
                    let result = self.clients[shard].find_missing(&digests).await;
                    (shard, keys, result)
                }
            });
            for (shard, keys, result) in join_all(calls).await {
                match result {
                    Ok(missing) => {
                        self.shard_answered(shard);
                        let missing: HashSet<Digest> = missing.into_iter().collect();
                        for i in keys {
                            answers[i] += 1;
                            if !missing.contains(&wanted[i]) {
                                present[i] = true;
                            }
                        }
                    }
                    Err(e) if shard_failure(e.code) => {
                        self.shard_failed(shard, &e);
                        failed.insert(shard);
                        last_error = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(i) = (0..wanted.len()).find(|&i| !present[i] && answers[i] == 0) {
            return Err(no_shard_answered(
                &format!("FindMissingBlobs of blobs/{}", wanted[i]),
                last_error,
            ));
        }
        Ok(wanted
            .into_iter()
            .zip(present)
            .filter(|(_, present)| !present)
            .map(|(digest, _)| digest)
            .collect())
    }

    /// Reads blobs into memory; any blob no shard has makes the whole call NOT_FOUND.
    pub async fn read_blobs(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Bytes)>, ClientError> {
        let read = self.try_read_blobs(digests).await?;
        if !read.missing.is_empty() {
            return Err(ClientError::not_found(&read.missing));
        }
        Ok(read.blobs)
    }

    /// As [`CasClient::try_read_blobs`]: each blob from the first shard in its order that has
    /// it intact; missing when every shard was asked and the ones that answered lack it.
    pub async fn try_read_blobs(&self, digests: &[Digest]) -> Result<BlobsRead, ClientError> {
        if let Some(only) = self.only() {
            return only.try_read_blobs(digests).await;
        }
        let wanted = distinct(digests);
        let mut walks: Vec<Walk> = wanted.iter().map(|d| self.walk(d)).collect();
        let mut told_missing = vec![false; wanted.len()];
        let mut found: HashMap<Digest, Bytes> = HashMap::new();
        let mut pending: Vec<usize> = (0..wanted.len()).collect();
        let mut failed = HashSet::new();
        let mut last_error = None;
        loop {
            let mut asks = Asks::new();
            for i in pending.drain(..) {
                match walks[i].next_shard(&failed) {
                    Some(shard) => asks.entry(shard).or_default().push(i),
                    None if told_missing[i] => {}
                    None => {
                        return Err(no_shard_answered(
                            &format!("reading blobs/{}", wanted[i]),
                            last_error,
                        ));
                    }
                }
            }
            if asks.is_empty() {
                break;
            }
            let calls = asks.into_iter().map(|(shard, keys)| {
                let digests: Vec<Digest> = keys.iter().map(|&i| wanted[i].clone()).collect();
                async move {
                    let result = self.clients[shard].try_read_blobs(&digests).await;
                    (shard, keys, result)
                }
            });
            for (shard, keys, result) in join_all(calls).await {
                match result {
                    Ok(read) => {
                        self.shard_answered(shard);
                        found.extend(read.blobs);
                        for i in keys {
                            if !found.contains_key(&wanted[i]) {
                                told_missing[i] = true;
                                pending.push(i);
                            }
                        }
                    }
                    Err(e) if shard_failure(e.code) => {
                        self.shard_failed(shard, &e);
                        failed.insert(shard);
                        last_error = Some(e);
                        pending.extend(keys);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let mut read = BlobsRead::default();
        let mut reported = HashSet::new();
        for digest in digests {
            if digest.is_empty_blob() {
                read.blobs.push((digest.clone(), Bytes::new()));
            } else if let Some(data) = found.get(digest) {
                read.blobs.push((digest.clone(), data.clone()));
            } else if reported.insert(digest) {
                read.missing.push(digest.clone());
            }
        }
        Ok(read)
    }

    /// As [`CasClient::download_to_file`], from the first shard in the blob's order that has it
    /// intact.
    pub async fn download_to_file(&self, digest: &Digest, path: &Path) -> Result<(), ClientError> {
        if let Some(only) = self.only() {
            return only.download_to_file(digest, path).await;
        }
        let mut walk = self.walk(digest);
        let mut not_found = None;
        let mut last_error = None;
        while let Some(shard) = walk.next_shard(&HashSet::new()) {
            match self.clients[shard].download_to_file(digest, path).await {
                Ok(()) => {
                    self.shard_answered(shard);
                    return Ok(());
                }
                Err(e) if e.code == Code::NotFound => not_found = Some(e),
                Err(e) if shard_failure(e.code) => {
                    self.shard_failed(shard, &e);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(not_found
            .unwrap_or_else(|| no_shard_answered(&format!("reading blobs/{digest}"), last_error)))
    }

    /// Uploads blobs to their shards, each to R of them (see the module documentation).
    pub async fn upload_blobs(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), ClientError> {
        self.upload(
            blobs
                .into_iter()
                .map(|(d, data)| (d, Payload::Memory(data)))
                .collect(),
        )
        .await
    }

    /// Uploads files to their shards, each to R of them; large files are streamed from disk.
    pub async fn upload_files(
        &self,
        files: Vec<(Digest, std::path::PathBuf)>,
    ) -> Result<(), ClientError> {
        self.upload(
            files
                .into_iter()
                .map(|(d, path)| (d, Payload::File(path)))
                .collect(),
        )
        .await
    }

    async fn upload(&self, items: Vec<(Digest, Payload)>) -> Result<(), ClientError> {
        if let Some(only) = self.only() {
            return only.upload(items).await;
        }
        let mut seen = HashSet::new();
        let items: Vec<(Digest, Payload)> = items
            .into_iter()
            .filter(|(d, _)| !d.is_empty_blob() && seen.insert(d.clone()))
            .collect();
        let mut walks: Vec<Walk> = items.iter().map(|(d, _)| self.walk(d)).collect();
        let mut stored = vec![0usize; items.len()];
        let mut failed = HashSet::new();
        let mut last_error = None;
        loop {
            let mut asks = Asks::new();
            for (i, walk) in walks.iter_mut().enumerate() {
                let mut placed = stored[i];
                while placed < self.replicas() {
                    let Some(shard) = walk.next_shard(&failed) else {
                        return Err(too_few_replicas(
                            &format!("blobs/{}", items[i].0),
                            stored[i],
                            self.replicas(),
                            last_error,
                        ));
                    };
                    asks.entry(shard).or_default().push(i);
                    placed += 1;
                }
            }
            if asks.is_empty() {
                return Ok(());
            }
            let calls = asks.into_iter().map(|(shard, keys)| {
                let batch: Vec<(Digest, Payload)> =
                    keys.iter().map(|&i| items[i].clone()).collect();
                async move {
                    let result = self.clients[shard].upload(batch).await;
                    (shard, keys, result)
                }
            });
            for (shard, keys, result) in join_all(calls).await {
                match result {
                    Ok(()) => {
                        self.shard_answered(shard);
                        for i in keys {
                            stored[i] += 1;
                        }
                    }
                    Err(e) if shard_failure(e.code) => {
                        self.shard_failed(shard, &e);
                        failed.insert(shard);
                        last_error = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Stores `result` for `action` on R shards of the action digest's order.
    pub async fn update_action_result(
        &self,
        action: &Digest,
        result: &v2::ActionResult,
    ) -> Result<(), ClientError> {
        if let Some(only) = self.only() {
            return only.update_action_result(action, result).await;
        }
        self.update_action_result_bytes(action, Bytes::from(result.encode_to_vec()))
            .await
    }

    /// Stores `result`, an encoded ActionResult, exactly as given, on R shards.
    pub async fn update_action_result_bytes(
        &self,
        action: &Digest,
        result: Bytes,
    ) -> Result<(), ClientError> {
        let mut walk = self.walk(action);
        let mut stored = 0;
        let mut last_error = None;
        while stored < self.replicas() {
            let Some(shard) = walk.next_shard(&HashSet::new()) else {
                return Err(too_few_replicas(
                    &format!("the result of action {action}"),
                    stored,
                    self.replicas(),
                    last_error,
                ));
            };
            match self.clients[shard]
                .update_action_result_bytes(action, result.clone())
                .await
            {
                Ok(()) => {
                    self.shard_answered(shard);
                    stored += 1;
                }
                Err(e) if shard_failure(e.code) => {
                    self.shard_failed(shard, &e);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The entry stored for `action` as its bytes, *unchecked*: the caller must check that the
    /// blobs it refers to exist. `None` once R shards said they have none.
    pub async fn stored_action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<Bytes>, ClientError> {
        let mut walk = self.walk(action);
        let mut answers = 0;
        let mut last_error = None;
        while let Some(shard) = walk.next_shard(&HashSet::new()) {
            match self.clients[shard].action_result_bytes(action, true).await {
                Ok(Some(result)) => {
                    self.shard_answered(shard);
                    return Ok(Some(result));
                }
                Ok(None) => {
                    self.shard_answered(shard);
                    answers += 1;
                    if answers == self.replicas() {
                        return Ok(None);
                    }
                }
                Err(e) if shard_failure(e.code) => {
                    self.shard_failed(shard, &e);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if answers > 0 {
            return Ok(None);
        }
        Err(no_shard_answered(
            &format!("GetActionResult of {action}"),
            last_error,
        ))
    }
}

fn too_few_replicas(
    what: &str,
    stored: usize,
    replicas: usize,
    last: Option<ClientError>,
) -> ClientError {
    let cause = last.map_or_else(String::new, |e| format!(": {e}"));
    ClientError::new(
        Code::Unavailable,
        format!(
            "{what} is on {stored} CAS shards, but {replicas} are needed and no other shard \
             could take it{cause}"
        ),
    )
}
