//! TLS and tokens on real binaries: a scheduler serving REAPI over TLS with a token file, a
//! worker that reaches its CAS over TLS with a token of its own, and every way a client can be
//! refused (plaintext, a CA that signed nothing of ours, no token, too small a scope, an
//! expired or removed token), each a clear error while the server serves on.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use prost::Message;
use scoot_cas_client::{CasClient, encode, to_proto};
use scoot_proto::longrunning::operation;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_client::ExecutionClient;
use scoot_security::ClientSecurity;
use tonic::Code;

use crate::support::*;

pub(crate) const BUILDER: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
pub(crate) const WORKER: &str = "w0w0w0w0w0w0w0w0w0w0w0w0w0w0w0w0";
const READER: &str = "r0r0r0r0r0r0r0r0r0r0r0r0r0r0r0r0";
const EXPIRED: &str = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0";
const ADMIN: &str = "a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0";

/// The token file of these tests: a builder (what Bazel needs), the workers, a cache reader
/// and an expired token.
pub(crate) fn write_tokens(path: &Path, with_reader: bool) {
    let mut text = format!(
        "# name scopes token [expires]\n\
         builder execute,cache-read,cache-write {BUILDER}\n\
         workers cache-read,cache-write {WORKER}\n\
         old execute,cache-read {EXPIRED} 2020-01-01T00:00:00Z\n\
         operator admin {ADMIN}\n"
    );
    if with_reader {
        text.push_str(&format!("reader cache-read {READER}\n"));
    }
    // Written aside and renamed over, as an operator's tooling would, so the server never
    // reads half a file.
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// Uploads an action running `script` (an empty input root, `out.txt` its one output), runs it
/// through Execute and returns the output's bytes.
pub(crate) async fn run_action(cas: &CasClient, script: &str) -> Result<Bytes, tonic::Status> {
    let command = v2::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        output_files: vec!["out.txt".into()],
        ..Default::default()
    };
    let (command_digest, command_bytes) = encode(&command);
    let (root_digest, root_bytes) = encode(&v2::Directory::default());
    let action = v2::Action {
        command_digest: Some(to_proto(&command_digest)),
        input_root_digest: Some(to_proto(&root_digest)),
        do_not_cache: true,
        ..Default::default()
    };
    let (action_digest, action_bytes) = encode(&action);
    cas.upload_blobs(vec![
        (command_digest, command_bytes),
        (root_digest, root_bytes),
        (action_digest.clone(), action_bytes),
    ])
    .await
    .map_err(|e| tonic::Status::new(e.code, e.message))?;
    let request = v2::ExecuteRequest {
        action_digest: Some(to_proto(&action_digest)),
        skip_cache_lookup: true,
        ..Default::default()
    };
    let mut stream = ExecutionClient::new(cas.channel().clone())
        .execute(request)
        .await?
        .into_inner();
    let mut last = None;
    while let Some(op) = tokio::time::timeout(std::time::Duration::from_secs(120), stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("the operation stream went silent"))??
    {
        last = Some(op);
    }
    let op = last.ok_or_else(|| tonic::Status::internal("no operation"))?;
    let Some(operation::Result::Response(any)) = op.result else {
        return Err(tonic::Status::internal(format!("no response in {op:?}")));
    };
    let response = v2::ExecuteResponse::decode(any.value.as_slice()).unwrap();
    let result = response.result.clone().unwrap_or_default();
    assert_eq!(result.exit_code, 0, "{response:?}");
    let file = result
        .output_files
        .first()
        .expect("out.txt was not uploaded");
    let digest = scoot_reapi::digest::from_proto(file.digest.as_ref(), "out.txt").unwrap();
    let blobs = cas
        .read_blobs(&[digest])
        .await
        .map_err(|e| tonic::Status::new(e.code, e.message))?;
    Ok(blobs[0].1.clone())
}

fn code_and_message(
    result: Result<impl std::fmt::Debug, scoot_cas_client::ClientError>,
) -> (Code, String) {
    let error = result.expect_err("the call should have been refused");
    (error.code, error.message)
}

/// A scheduler serving TLS with the tokens of [`write_tokens`], and what a test needs beside it.
struct Secured {
    dir: tempfile::TempDir,
    pki: Pki,
    tokens: std::path::PathBuf,
    scheduler: Scheduler,
    grpc: String,
}

impl Secured {
    fn start(extra: &[&str]) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path(), &[]);
        let tokens = dir.path().join("tokens");
        write_tokens(&tokens, true);
        let mut flags = pki.flags();
        flags.extend(["-auth_tokens".into(), tokens.display().to_string()]);
        flags.extend(extra.iter().map(|f| f.to_string()));
        let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let scheduler = Scheduler::start_with_flags(&[], serde_json::json!({}), &flag_refs);
        let grpc = format!("127.0.0.1:{}", scheduler.grpc_port);
        Secured {
            dir,
            pki,
            tokens,
            scheduler,
            grpc,
        }
    }
}

#[test]
fn a_tls_scheduler_with_tokens_serves_each_token_what_its_scope_allows() {
    let Secured {
        dir,
        pki,
        tokens,
        scheduler,
        grpc,
    } = Secured::start(&[]);
    let worker_token = dir.path().join("worker-token");
    std::fs::write(&worker_token, WORKER).unwrap();
    // The worker connects over TLS; its own ports stay plaintext here (the multi-host test
    // serves them over TLS).
    let mut worker_flags: Vec<String> = vec!["-tls_ca".into(), pki.ca.display().to_string()];
    worker_flags.extend([
        "-cas_addr".into(),
        grpc.clone(),
        "-auth_token_file".into(),
        worker_token.display().to_string(),
    ]);
    let worker_refs: Vec<&str> = worker_flags.iter().map(String::as_str).collect();
    let worker = Worker::start(&worker_refs);
    write_workers(&scheduler.workers_file, &[&worker]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let connect = |security: ClientSecurity| {
            let grpc = grpc.clone();
            async move { CasClient::connect_with(&grpc, "", &security).await }
        };
        // The builder runs an action end to end: TLS to the scheduler, TLS and the workers'
        // token from the worker to the CAS.
        let builder = connect(pki.client(dir.path(), Some(BUILDER)))
            .await
            .unwrap();
        let out = run_action(&builder, "echo secure > out.txt").await.unwrap();
        assert_eq!(&out[..], b"secure\n");
        let some_blob = scoot_cas_client::digest_of(b"secure\n");

        // Plaintext to the TLS port: the connection fails, and the server serves on.
        let plain = CasClient::connect(&grpc, "").await;
        let refused = match plain {
            Ok(client) => client
                .find_missing(std::slice::from_ref(&some_blob))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        // (What the client sees depends on how far its HTTP/2 got before the server's TLS
        // alert: a closed connection or a malformed frame; never an answer.)
        let (code, message) = code_and_message(refused);
        assert!(
            message.contains("transport error") || message.contains("protocol error"),
            "{code:?} {message}"
        );

        // A client trusting another CA refuses the server's certificate.
        let mut stranger = pki.client(dir.path(), Some(BUILDER));
        stranger.tls = Some(scoot_security::ClientTls::new(&pki.other_ca, None).unwrap());
        let (code, message) = code_and_message(connect(stranger).await);
        assert_eq!(code, Code::Unavailable);
        assert!(
            message.contains("UnknownIssuer") || message.contains("certificate"),
            "{message}"
        );

        // No token: UNAUTHENTICATED before anything is looked up.
        let anonymous = connect(pki.client(dir.path(), None)).await.unwrap();
        let (code, message) = code_and_message(
            anonymous
                .find_missing(std::slice::from_ref(&some_blob))
                .await,
        );
        assert_eq!(code, Code::Unauthenticated, "{message}");
        assert!(message.contains("no credentials"), "{message}");

        // A reader reads the cache but may not write it or run anything.
        let reader = connect(pki.client(dir.path(), Some(READER))).await.unwrap();
        assert!(
            reader
                .find_missing(std::slice::from_ref(&some_blob))
                .await
                .is_ok()
        );
        let (code, message) = code_and_message(
            reader
                .update_action_result(&some_blob, &v2::ActionResult::default())
                .await,
        );
        assert_eq!(code, Code::PermissionDenied, "{message}");
        assert!(message.contains("lacks the cache-write scope"), "{message}");
        let denied = run_action(&reader, "true").await.unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

        // An expired token is refused as unknown callers are.
        let expired = connect(pki.client(dir.path(), Some(EXPIRED)))
            .await
            .unwrap();
        let (code, message) =
            code_and_message(expired.find_missing(std::slice::from_ref(&some_blob)).await);
        assert_eq!(code, Code::Unauthenticated);
        assert!(message.contains("expired"), "{message}");

        // Removing the reader from the file takes effect without a restart.
        write_tokens(&tokens, false);
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            match reader.find_missing(std::slice::from_ref(&some_blob)).await {
                Err(e) if e.code == Code::Unauthenticated => {
                    assert!(e.message.contains("unknown token"), "{}", e.message);
                    break;
                }
                _ => assert!(
                    std::time::Instant::now() < deadline,
                    "the reader still gets in"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }

        // After all of that the builder is still served.
        let out = run_action(&builder, "echo again > out.txt").await.unwrap();
        assert_eq!(&out[..], b"again\n");

        // The scheduler's HTTP port is TLS too, and its admin actions need an admin token.
        let client = scoot_security::http_client(pki.client(dir.path(), None).tls.as_ref())
            .no_proxy()
            .build()
            .unwrap();
        let http = format!("https://127.0.0.1:{}", scheduler.http_port);
        let health = client.get(format!("{http}/health")).send().await.unwrap();
        assert!(health.status().is_success());
        let node = format!("127.0.0.1:{}", worker.thrift_port);
        for action in ["offline", "reinstate"] {
            let url = format!("{http}/admin/workers/{node}/{action}");
            let ask = |token: Option<&str>| {
                let request = client.post(&url);
                let request = match token {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                };
                async move {
                    let response = request.send().await.unwrap();
                    (response.status().as_u16(), response.text().await.unwrap())
                }
            };
            let (status, body) = ask(None).await;
            assert_eq!(status, 401, "{body}");
            let (status, body) = ask(Some(BUILDER)).await;
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("lacks the admin scope"), "{body}");
            let (status, body) = ask(Some(ADMIN)).await;
            assert_eq!((status, body.as_str()), (200, "ok\n"), "{action}");
        }
    });
}

#[test]
fn bzutil_over_tls_with_a_token_and_without_one() {
    let Secured {
        dir,
        pki,
        grpc,
        scheduler: _scheduler,
        ..
    } = Secured::start(&[]);
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{BUILDER}\n")).unwrap();
    let bzutil = |auth: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bzutil"));
        cmd.arg("-tls_ca").arg(&pki.ca);
        if auth {
            cmd.arg("-auth_token_file").arg(&token);
        }
        cmd.args(["upload_command", "-cas_addr", &grpc, "echo", "hi"]);
        cmd.output().unwrap()
    };
    let ok = bzutil(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim().len(),
        64 + 1 + 2,
        "a digest"
    );
    let refused = bzutil(false);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no credentials"), "{stderr}");
}

/// `-auth_connection_tokens`: a call without a token acts with the last token its connection
/// carried (Bazel 2.1's ByteStream uploads), never with another connection's, and only while
/// that token is valid; without the flag such a call is refused.
#[test]
fn a_call_without_a_token_inherits_its_connections_only_when_asked() {
    use scoot_security::grpc::BearerToken;
    use tonic::service::interceptor::InterceptedService;

    for inherit in [false, true] {
        let extra: &[&str] = if inherit {
            &["-auth_connection_tokens"]
        } else {
            &[]
        };
        let Secured {
            dir,
            pki,
            tokens,
            grpc,
            scheduler: _scheduler,
        } = Secured::start(extra);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let tls = pki.client(dir.path(), None).tls.unwrap();
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
                .unwrap()
                .tls_config(tls.tonic())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let token_file = dir.path().join("reader");
            std::fs::write(&token_file, READER).unwrap();
            let on_connection = |token: BearerToken| {
                CasClient::from_channel(InterceptedService::new(channel.clone(), token), "")
            };
            let reader = on_connection(BearerToken::from_file(&token_file).unwrap());
            let silent = on_connection(BearerToken::none());
            let blob = scoot_cas_client::digest_of(b"x");
            let blob = std::slice::from_ref(&blob);
            let refused = |r: Result<Vec<_>, scoot_cas_client::ClientError>| {
                r.is_err_and(|e| e.code == Code::Unauthenticated)
            };
            assert!(
                refused(silent.find_missing(blob).await),
                "nothing presented yet"
            );
            assert!(reader.find_missing(blob).await.is_ok());
            if !inherit {
                assert!(refused(silent.find_missing(blob).await));
                return;
            }
            assert!(
                silent.find_missing(blob).await.is_ok(),
                "inherits the reader's token"
            );
            // Within the inherited token's scopes only.
            let (code, _) = code_and_message(
                silent
                    .update_action_result(&blob[0], &v2::ActionResult::default())
                    .await,
            );
            assert_eq!(code, Code::PermissionDenied);
            // Another connection inherits nothing.
            let other = CasClient::connect_with(&grpc, "", &pki.client(dir.path(), None))
                .await
                .unwrap();
            assert!(refused(other.find_missing(blob).await));
            // A removed token is gone for the calls that inherited it too.
            write_tokens(&tokens, false);
            let deadline = std::time::Instant::now() + DEADLINE;
            while !refused(silent.find_missing(blob).await) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still inherits a removed token"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
    }
}
