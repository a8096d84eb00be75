//! bzutil's command line (Scoot's subcommands and flags, plus `upload_dir`).

use std::path::PathBuf;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use scoot_cas_client::{CasClient, digest_of, encode, read_tree, to_proto};
use scoot_security::ClientSecurity;

use crate::exec;
use scoot_core::Digest;
use scoot_proto::reapi::v2 as re;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bzutil",
    version,
    about = "Client for a Bazel Remote Execution API CAS"
)]
pub struct Cli {
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", global = true, default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text, global = true)]
    pub log_format: scoot_bin_util::LogFormat,
    /// TLS (-tls_ca, and -tls_cert/-tls_key for servers that ask for a client certificate)
    /// and the token (-auth_token_file) of every call; given before the subcommand.
    #[command(flatten)]
    pub transport: scoot_security::TransportFlags,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Args, Debug, Clone)]
pub struct CasArgs {
    /// The CAS server (an apiserver's gRPC address).
    #[arg(long = "cas_addr", default_value = "localhost:9098")]
    pub cas_addr: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Print JSON instead of plain digests.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// The Execution service (a scheduler's gRPC address).
    #[arg(long = "grpc_addr", default_value = "localhost:9099")]
    pub grpc_addr: String,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Print JSON instead of Scoot's text layout.
    #[arg(long)]
    pub json: bool,
}

impl ExecArgs {
    async fn channel(
        &self,
        security: &ClientSecurity,
    ) -> anyhow::Result<scoot_cas_client::AuthChannel> {
        Ok(
            CasClient::connect_with(&self.grpc_addr, &self.instance, security)
                .await?
                .channel()
                .clone(),
        )
    }
}

fn print_operation(op: &scoot_proto::longrunning::Operation, json: bool, full: bool) {
    if json || full {
        println!("{}", exec::to_json(op, full));
    } else {
        print!("{}", exec::describe(op));
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Store a Command (argv, environment, outputs, platform) and print its digest.
    #[command(name = "upload_command")]
    UploadCommand {
        #[command(flatten)]
        cas: CasArgs,
        /// Environment as k=v,k2=v2.
        #[arg(long, default_value = "")]
        env: String,
        #[arg(long = "output_files", default_value = "")]
        output_files: String,
        #[arg(long = "output_dirs", default_value = "")]
        output_dirs: String,
        /// Platform properties as k=v,k2=v2.
        #[arg(long = "platform_props", default_value = "")]
        platform_props: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
    /// Store an Action for a stored Command and input root, and print its digest.
    #[command(name = "upload_action")]
    UploadAction {
        #[command(flatten)]
        cas: CasArgs,
        /// The Command's digest, <hash>/<size>.
        #[arg(long)]
        command: Digest,
        /// The input root's digest (default: the empty directory).
        #[arg(long = "input_root")]
        input_root: Option<Digest>,
        #[arg(long = "no_cache")]
        no_cache: bool,
    },
    /// Store a local directory tree (files and Directory messages); print the root's digest.
    #[command(name = "upload_dir")]
    UploadDir {
        #[command(flatten)]
        cas: CasArgs,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Store every file under a directory; print `<digest> <path>` for each.
    #[command(name = "batch_upload")]
    BatchUpload {
        #[command(flatten)]
        cas: CasArgs,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Fetch blobs into a directory (one file per blob, named by its hash).
    #[command(name = "batch_download")]
    BatchDownload {
        #[command(flatten)]
        cas: CasArgs,
        /// <hash>/<size>,…
        #[arg(long, value_delimiter = ',', required = true)]
        digests: Vec<Digest>,
        #[arg(long, default_value = "./bazel_batch_downloads")]
        dir: PathBuf,
    },
    /// Ask the scheduler to execute an uploaded Action; print its operation (the first state,
    /// or the final one with --wait).
    Execute {
        #[command(flatten)]
        exec: ExecArgs,
        /// The Action's digest, <hash>/<size>.
        #[arg(long)]
        action: Digest,
        /// Run it even if the action cache has a result.
        #[arg(long = "skip_cache")]
        skip_cache: bool,
        /// Wait until the execution is done.
        #[arg(long)]
        wait: bool,
    },
    /// Print an operation's current state.
    #[command(name = "get_operation")]
    GetOperation {
        #[command(flatten)]
        exec: ExecArgs,
        #[arg(long)]
        name: String,
        /// JSON with every ActionResult field (--json gives a summary).
        #[arg(long = "json_full")]
        json_full: bool,
    },
    /// Cancel an operation (its job is killed).
    #[command(name = "cancel_operation")]
    CancelOperation {
        #[command(flatten)]
        exec: ExecArgs,
        #[arg(long)]
        name: String,
    },
    /// Print which of the digests the CAS lacks.
    #[command(name = "find_missing_blobs")]
    FindMissingBlobs {
        #[command(flatten)]
        cas: CasArgs,
        #[arg(long, value_delimiter = ',', required = true)]
        digests: Vec<Digest>,
    },
}

fn pairs(list: &str, what: &str) -> anyhow::Result<Vec<(String, String)>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--{what}: {kv:?} is not k=v"))
        })
        .collect()
}

fn names(list: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// The Command message for `upload_command` (environment and platform sorted, as REAPI requires).
pub fn command_message(
    argv: Vec<String>,
    env: &str,
    files: &str,
    dirs: &str,
    platform: &str,
) -> anyhow::Result<re::Command> {
    let mut env = pairs(env, "env")?;
    env.sort();
    let mut props = pairs(platform, "platform_props")?;
    props.sort();
    let (output_files, output_directories) = (names(files), names(dirs));
    let mut output_paths: Vec<String> = output_files
        .iter()
        .chain(&output_directories)
        .cloned()
        .collect();
    output_paths.sort();
    Ok(re::Command {
        arguments: argv,
        environment_variables: env
            .into_iter()
            .map(|(name, value)| re::command::EnvironmentVariable { name, value })
            .collect(),
        output_files,
        output_directories,
        output_paths,
        platform: (!props.is_empty()).then(|| re::Platform {
            properties: props
                .into_iter()
                .map(|(name, value)| re::platform::Property { name, value })
                .collect(),
        }),
        ..Default::default()
    })
}

fn print_digest(digest: &Digest, json: bool) {
    if json {
        println!(
            "{}",
            json!({"hash": digest.hash, "size_bytes": digest.size_bytes})
        );
    } else {
        println!("{digest}");
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let security = cli.transport.client()?;
    match cli.command {
        Cmd::UploadCommand {
            cas,
            env,
            output_files,
            output_dirs,
            platform_props,
            argv,
        } => {
            let command =
                command_message(argv, &env, &output_files, &output_dirs, &platform_props)?;
            let (digest, data) = encode(&command);
            CasClient::connect_with(&cas.cas_addr, &cas.instance, &security)
                .await?
                .upload_blobs(vec![(digest.clone(), data)])
                .await?;
            tracing::info!("wrote the command to the CAS");
            print_digest(&digest, cas.json);
        }
        Cmd::UploadAction {
            cas,
            command,
            input_root,
            no_cache,
        } => {
            let root = input_root.unwrap_or_else(|| encode(&re::Directory::default()).0);
            let action = re::Action {
                command_digest: Some(to_proto(&command)),
                input_root_digest: Some(to_proto(&root)),
                do_not_cache: no_cache,
                ..Default::default()
            };
            let (digest, data) = encode(&action);
            let client = CasClient::connect_with(&cas.cas_addr, &cas.instance, &security).await?;
            let missing = client
                .find_missing(&[command.clone(), root.clone()])
                .await?;
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(Digest::to_string).collect();
                anyhow::bail!("the CAS lacks {} (upload them first)", list.join(", "));
            }
            client.upload_blobs(vec![(digest.clone(), data)]).await?;
            tracing::info!("wrote the action to the CAS");
            print_digest(&digest, cas.json);
        }
        Cmd::UploadDir { cas, dir } => {
            let tree = tokio::task::spawn_blocking(move || read_tree(&dir)).await??;
            let client = CasClient::connect_with(&cas.cas_addr, &cas.instance, &security).await?;
            // Files before the Directory messages that name them.
            client.upload_files(tree.files.clone()).await?;
            client.upload_blobs(tree.directory_blobs()).await?;
            print_digest(&tree.root_digest, cas.json);
        }
        Cmd::BatchUpload { cas, dir } => {
            let mut files = Vec::new();
            collect_files(&dir, &dir, &mut files)?;
            let blobs: Vec<(Digest, Bytes)> = files
                .iter()
                .map(|(_, data)| (digest_of(data), data.clone()))
                .collect();
            CasClient::connect_with(&cas.cas_addr, &cas.instance, &security)
                .await?
                .upload_blobs(blobs)
                .await?;
            for (path, data) in files {
                println!("{} {path}", digest_of(&data));
            }
        }
        Cmd::BatchDownload { cas, digests, dir } => {
            let blobs = CasClient::connect_with(&cas.cas_addr, &cas.instance, &security)
                .await?
                .read_blobs(&digests)
                .await?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            for (digest, data) in blobs {
                let path = dir.join(&digest.hash);
                std::fs::write(&path, &data)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                println!("{digest} {}", path.display());
            }
        }
        Cmd::Execute {
            exec: args,
            action,
            skip_cache,
            wait,
        } => {
            let op = exec::execute(
                args.channel(&security).await?,
                &args.instance,
                &action,
                skip_cache,
                wait,
            )
            .await?;
            print_operation(&op, args.json, false);
        }
        Cmd::GetOperation {
            exec: args,
            name,
            json_full,
        } => {
            let op = exec::get_operation(args.channel(&security).await?, &name).await?;
            print_operation(&op, args.json, json_full);
        }
        Cmd::CancelOperation { exec: args, name } => {
            exec::cancel_operation(args.channel(&security).await?, &name).await?;
            tracing::info!(operation = %name, "cancelled");
        }
        Cmd::FindMissingBlobs { cas, digests } => {
            let missing = CasClient::connect_with(&cas.cas_addr, &cas.instance, &security)
                .await?
                .find_missing(&digests)
                .await?;
            if cas.json {
                let list: Vec<String> = missing.iter().map(Digest::to_string).collect();
                println!("{}", json!({"missing": list}));
            } else {
                for digest in missing {
                    println!("{digest}");
                }
            }
        }
    }
    Ok(())
}

fn collect_files(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<(String, Bytes)>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else if path.is_file() {
            let data = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            out.push((rel, Bytes::from(data)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_messages_are_canonical() {
        let cmd = command_message(
            vec!["sleep".into(), "17".into()],
            "B=2,A=1",
            "out/b,out/a",
            "d",
            "OSFamily=linux",
        )
        .unwrap();
        let env: Vec<&str> = cmd
            .environment_variables
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, vec!["A", "B"]);
        assert_eq!(cmd.output_files, vec!["out/a", "out/b"]);
        assert_eq!(cmd.output_paths, vec!["d", "out/a", "out/b"]);
        assert!(command_message(vec!["x".into()], "novalue", "", "", "").is_err());
        // Seed 002's walk-through: `upload_command sleep 17` is an 11-byte Command.
        let plain = command_message(vec!["sleep".into(), "17".into()], "", "", "", "").unwrap();
        assert_eq!(
            encode(&plain).0.to_string(),
            "1833d7c57656d2b7ee97e2068ce742f80e61357fba12a8b8d627782da3a58c29/11"
        );
    }

    /// upload_dir, batch_upload and batch_download through the shared client, with blobs that
    /// together exceed one batch (the large one travels through ByteStream).
    #[tokio::test]
    async fn uploaded_files_download_by_digest() {
        let server = scoot_cas_client::testing::TestServer::start()
            .await
            .unwrap();
        let cas = CasArgs {
            cas_addr: server.address(),
            instance: String::new(),
            json: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let large: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("large"), &large).unwrap();
        std::fs::write(dir.path().join("small"), "small").unwrap();
        let run_cmd = |command| {
            run(Cli {
                log_level: "info".into(),
                log_format: Default::default(),
                transport: Default::default(),
                command,
            })
        };
        run_cmd(Cmd::UploadDir {
            cas: cas.clone(),
            dir: dir.path().to_path_buf(),
        })
        .await
        .unwrap();
        let tree = read_tree(dir.path()).unwrap();
        let mut stored: Vec<Digest> = tree.files.iter().map(|(d, _)| d.clone()).collect();
        stored.push(tree.root_digest.clone());
        let client = server.client("").await.unwrap();
        assert!(client.find_missing(&stored).await.unwrap().is_empty());

        run_cmd(Cmd::BatchUpload {
            cas: cas.clone(),
            dir: dir.path().to_path_buf(),
        })
        .await
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let digests = vec![digest_of(&large), digest_of(b"small")];
        run_cmd(Cmd::BatchDownload {
            cas: cas.clone(),
            digests: digests.clone(),
            dir: out.path().to_path_buf(),
        })
        .await
        .unwrap();
        assert_eq!(
            std::fs::read(out.path().join(&digests[0].hash)).unwrap(),
            large
        );
        assert_eq!(
            std::fs::read(out.path().join(&digests[1].hash)).unwrap(),
            b"small"
        );
        let absent: Digest = format!("{}/5", "0".repeat(64)).parse().unwrap();
        let e = run_cmd(Cmd::BatchDownload {
            cas,
            digests: vec![absent],
            dir: out.path().to_path_buf(),
        })
        .await
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("blobs/{}/5", "0".repeat(64))),
            "{e}"
        );
    }
}
