//! A typed client for a REAPI v2 cache: ContentAddressableStorage, ByteStream and ActionCache.
//!
//! [`CasClient`] is what the workspace uses to talk to a CAS (bzutil, workers running actions).
//! It picks the transport per blob: blobs up to [`MAX_BATCH_BLOB_BYTES`] travel in
//! BatchReadBlobs/BatchUpdateBlobs requests of at most [`MAX_BATCH_TOTAL_BYTES`] each, larger ones
//! through ByteStream, streamed to or from disk when the caller works with files. [`read_tree`]
//! turns a local directory into Directory messages (for uploads and output directories).
//!
//! Invariants:
//! * Nothing a server sends is handed back unverified: every blob read is checked against its
//!   digest (size and SHA-256), and a file download only appears under its final name once it
//!   verified (it is written under a temporary name in the same directory, then renamed).
//! * Every call is bounded in time: connecting by [`CONNECT_TIMEOUT`], unary calls by
//!   [`RPC_TIMEOUT`], streams by a deadline that grows with the blob ([`stream_deadline`]).
//! * The empty blob always exists: it is never asked for, uploaded or reported missing.
//! * Errors are one type, [`ClientError`], carrying the gRPC code, so callers can tell a missing
//!   blob (NOT_FOUND) from an unreachable server (UNAVAILABLE).
//!
//! With the `testing` feature, `testing::TestServer` runs the real `scoot_cas_services` services
//! in-process for other crates' tests.

mod digest;
mod error;
mod read;
pub mod ring;
pub mod sharded;
mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tree;
mod write;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use scoot_core::Digest;
use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
use scoot_proto::raw::UpdateActionResultRequestRaw;
use scoot_proto::raw::action_cache_client::ActionCacheClient as RawActionCacheClient;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::action_cache_client::ActionCacheClient;
use scoot_proto::reapi::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use scoot_security::ClientSecurity;
use scoot_security::grpc::BearerToken;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use digest::{batch_groups, digest_of, digest_of_file, encode};
pub use error::ClientError;
pub use read::BlobsRead;
pub use ring::Ring;
pub use scoot_reapi::digest::to_proto;
pub use sharded::{ShardSpec, ShardSpecError, ShardedBlobStore, ShardedCas};
pub use source::RemoteBlobSource;
pub use tree::{LocalTree, read_tree};

/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of every unary call.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Blobs larger than this go through ByteStream rather than the batch RPCs.
pub const MAX_BATCH_BLOB_BYTES: u64 = 1 << 20;
/// Most blob bytes in one BatchReadBlobs or BatchUpdateBlobs request (the limit our server
/// advertises and REAPI servers commonly accept).
pub const MAX_BATCH_TOTAL_BYTES: u64 = 4 << 20;
/// Most blobs in one batch request: thousands of tiny blobs would otherwise make a response
/// whose per-blob overhead exceeds the message size limit.
pub const MAX_BATCH_BLOBS: usize = 5000;
/// Most digests in one FindMissingBlobs request.
pub const FIND_MISSING_CHUNK: usize = 10_000;
/// Size of each ByteStream WriteRequest's data.
pub const WRITE_CHUNK_BYTES: usize = 64 << 10;

/// Streams get this long plus the time the blob takes at [`STREAM_BYTES_PER_SECOND`].
const STREAM_BASE_DEADLINE: Duration = Duration::from_secs(60);
const STREAM_BYTES_PER_SECOND: u64 = 10_000_000;
/// No stream waits longer, whatever size a digest claims: a size near 2^63 would otherwise ask
/// for a deadline that gRPC's timeout header cannot carry (tonic panics formatting it).
const STREAM_MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest gRPC message sent or accepted: a full batch plus per-blob overhead fits easily.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Batch requests and streams in flight at once per call.
const CONCURRENCY: usize = 4;
/// HTTP/2 flow-control windows: with hyper's defaults a big download stalls for a window update
/// every MiB (the server side makes the same choice in `scoot_cas_services::server_builder`).
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// The deadline of a ByteStream Read or Write of `size` bytes.
pub fn stream_deadline(size: u64) -> Duration {
    STREAM_BASE_DEADLINE
        .saturating_add(Duration::from_secs(size / STREAM_BYTES_PER_SECOND))
        .min(STREAM_MAX_DEADLINE)
}

/// A connection to a CAS and action cache for one instance name. Cloning is cheap and clones
/// share the connection.
#[derive(Clone, Debug)]
pub struct CasClient {
    channel: AuthChannel,
    instance: String,
}

/// A connection that sends this process's bearer token (if it has one) on every call.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

impl CasClient {
    /// Connects to `addr` (`host:port`, `http://host:port` or `grpcs://host:port`) without TLS
    /// or a token, failing with UNAVAILABLE when the server cannot be reached within
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(addr: &str, instance: &str) -> Result<CasClient, ClientError> {
        CasClient::connect_with(addr, instance, &ClientSecurity::default()).await
    }

    /// Like [`connect`](CasClient::connect), over TLS when `security` has a CA (`-tls_ca`) and
    /// sending its token.
    pub async fn connect_with(
        addr: &str,
        instance: &str,
        security: &ClientSecurity,
    ) -> Result<CasClient, ClientError> {
        let endpoint = endpoint(addr, security)?;
        let channel = endpoint.connect().await.map_err(|e| {
            ClientError::new(
                Code::Unavailable,
                format!(
                    "cannot connect to {}: {}",
                    endpoint.uri(),
                    scoot_core::error_chain(&e)
                ),
            )
        })?;
        Ok(CasClient::from_channel(
            InterceptedService::new(channel, security.token.clone()),
            instance,
        ))
    }

    /// Like [`connect_with`](CasClient::connect_with), but the connection is made on the first
    /// call and remade after a failure, so a client can exist before its server is up. Must be
    /// called within a tokio runtime.
    pub fn connect_lazy(
        addr: &str,
        instance: &str,
        security: &ClientSecurity,
    ) -> Result<CasClient, ClientError> {
        Ok(CasClient::from_channel(
            InterceptedService::new(
                endpoint(addr, security)?.connect_lazy(),
                security.token.clone(),
            ),
            instance,
        ))
    }

    pub fn from_channel(channel: AuthChannel, instance: &str) -> CasClient {
        CasClient {
            channel,
            instance: instance.to_string(),
        }
    }

    /// The same connection, for another instance name.
    pub fn with_instance(&self, instance: &str) -> CasClient {
        CasClient::from_channel(self.channel.clone(), instance)
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The underlying connection, for other services on the same server (Execution).
    pub fn channel(&self) -> &AuthChannel {
        &self.channel
    }

    /// The result cached for `action`, or `None` when the cache has none.
    pub async fn get_action_result(
        &self,
        action: &Digest,
    ) -> Result<Option<v2::ActionResult>, ClientError> {
        let request = v2::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(to_proto(action)),
            ..Default::default()
        };
        let what = format!("GetActionResult of {action}");
        match unary(&what, self.action_cache().get_action_result(timed(request))).await {
            Ok(result) => Ok(Some(result)),
            Err(e) if e.code == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn update_action_result(
        &self,
        action: &Digest,
        result: &v2::ActionResult,
    ) -> Result<(), ClientError> {
        let request = v2::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(to_proto(action)),
            action_result: Some(result.clone()),
            ..Default::default()
        };
        let what = format!("UpdateActionResult of {action}");
        unary(
            &what,
            self.action_cache().update_action_result(timed(request)),
        )
        .await?;
        Ok(())
    }

    /// The result stored for `action` as the bytes stored, or `None` on a miss. With
    /// `unchecked`, the server is asked not to check that the result's blobs are in its own CAS
    /// (see [`scoot_reapi::UNCHECKED_RESULT_METADATA`]): for a caller that checks them itself.
    pub async fn action_result_bytes(
        &self,
        action: &Digest,
        unchecked: bool,
    ) -> Result<Option<Bytes>, ClientError> {
        let mut request = timed(v2::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(to_proto(action)),
            ..Default::default()
        });
        if unchecked {
            request.metadata_mut().insert(
                scoot_reapi::UNCHECKED_RESULT_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        let what = format!("GetActionResult of {action}");
        match unary(&what, self.raw_action_cache().get_action_result(request)).await {
            Ok(result) => Ok(Some(result.0)),
            Err(e) if e.code == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores `result`, an encoded ActionResult, for `action` exactly as given.
    pub async fn update_action_result_bytes(
        &self,
        action: &Digest,
        result: Bytes,
    ) -> Result<(), ClientError> {
        let request = UpdateActionResultRequestRaw {
            instance_name: self.instance.clone(),
            action_digest: Some(to_proto(action)),
            action_result: Some(result),
            ..Default::default()
        };
        let what = format!("UpdateActionResult of {action}");
        unary(
            &what,
            self.raw_action_cache().update_action_result(timed(request)),
        )
        .await?;
        Ok(())
    }

    fn raw_action_cache(&self) -> RawActionCacheClient<AuthChannel> {
        RawActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn cas(&self) -> ContentAddressableStorageClient<AuthChannel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn bytestream(&self) -> ByteStreamClient<AuthChannel> {
        ByteStreamClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn action_cache(&self) -> ActionCacheClient<AuthChannel> {
        ActionCacheClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `[instance/]rest`: ByteStream resource names drop the slash for the empty instance.
    fn resource(&self, rest: String) -> String {
        if self.instance.is_empty() {
            rest
        } else {
            format!("{}/{rest}", self.instance)
        }
    }
}

/// The endpoint of `addr`: `grpcs://` (Bazel's spelling) or a CA in `security` means TLS.
fn endpoint(addr: &str, security: &ClientSecurity) -> Result<Endpoint, ClientError> {
    let invalid = |e: &dyn std::error::Error| {
        ClientError::new(
            Code::InvalidArgument,
            format!(
                "invalid CAS address {addr:?}: {}",
                scoot_core::error_chain(e)
            ),
        )
    };
    let (scheme, rest) = match addr.split_once("://") {
        Some(("grpcs" | "https", rest)) => ("https", rest),
        Some(("grpc" | "http", rest)) if security.tls.is_none() => ("http", rest),
        Some(("grpc" | "http", rest)) => ("https", rest),
        Some((scheme, _)) => {
            return Err(ClientError::new(
                Code::InvalidArgument,
                format!("invalid CAS address {addr:?}: unknown scheme {scheme:?}"),
            ));
        }
        None => (
            if security.tls.is_some() {
                "https"
            } else {
                "http"
            },
            addr,
        ),
    };
    let mut endpoint =
        Endpoint::from_shared(format!("{scheme}://{rest}")).map_err(|e| invalid(&e))?;
    if scheme == "https" {
        let Some(tls) = &security.tls else {
            return Err(ClientError::new(
                Code::InvalidArgument,
                format!("{addr:?} asks for TLS: give the CA that signed its certificate (-tls_ca)"),
            ));
        };
        endpoint = endpoint.tls_config(tls.tonic()).map_err(|e| invalid(&e))?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true))
}

/// A request carrying [`RPC_TIMEOUT`] as its gRPC deadline, so the server gives up too.
fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(RPC_TIMEOUT);
    request
}

/// Runs `call` within `deadline`: the gRPC deadline header alone would trust the server to end
/// the call, and a stalled connection would hang forever.
async fn within<T>(
    deadline: Duration,
    what: &str,
    call: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::new(
                Code::DeadlineExceeded,
                format!("{what}: no answer within {deadline:?}"),
            ))
        })
}

async fn unary<T>(
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ClientError> {
    within(RPC_TIMEOUT, what, async {
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|status| ClientError::from_status(&status, what))
    })
    .await
}

#[cfg(test)]
mod tests;
