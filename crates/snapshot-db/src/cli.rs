//! `scoot-snapshot-db`: create, read and export snapshots from the command line.
//!
//! The repository containing the current directory is the data repository. Snapshots go to the
//! bundlestore named by `--bundlestore_url`, else `$SCOOT_BUNDLESTORE_URL`, else
//! `http://<second line of ~/.cloudscootaddr$SCOOT_ID>/bundle/`. Besides an HTTP URL, the
//! bundlestore may be a local directory (an absolute path or `file://` URL), as an apiserver's
//! `BUNDLESTORE_STORE_DIR`.
//!
//! Each command prints its result on stdout; `-log_level` goes to stderr.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use scoot_bundlestore::store::{FileStore, HttpStore, HttpStoreOptions, Store};

use crate::db::{GitDb, GitDbConfig};

/// Environment variable naming the bundlestore.
pub const BUNDLESTORE_URL_ENV: &str = "SCOOT_BUNDLESTORE_URL";

/// Scoot snapshot db: create, read and export git-backed snapshots.
#[derive(Parser, Debug)]
#[command(name = "scoot-snapshot-db", version)]
pub struct Args {
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info", global = true)]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text, global = true)]
    pub log_format: scoot_bin_util::LogFormat,
    /// Bundlestore URL (`http://host:port/bundle/`) or directory; default $SCOOT_BUNDLESTORE_URL,
    /// then `http://<2nd line of ~/.cloudscootaddr$SCOOT_ID>/bundle/`.
    #[arg(long = "bundlestore_url", global = true)]
    pub bundlestore_url: Option<String>,
    /// Deadline of each git command.
    #[arg(long = "git_timeout", default_value = "10m", value_parser = humantime::parse_duration, global = true)]
    pub git_timeout: Duration,
    /// The CA of a bundlestore serving TLS (an apiserver with -tls_cert): its URL is then
    /// `https://`, whatever scheme it was given with.
    #[arg(long = "tls_ca", global = true)]
    pub tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a snapshot.
    #[command(subcommand)]
    Create(Create),
    /// Read data from a snapshot.
    #[command(subcommand)]
    Read(Read),
    /// Export a snapshot.
    #[command(subcommand)]
    Export(Export),
}

#[derive(Subcommand, Debug)]
pub enum Create {
    /// Ingests a directory (it need not be in the repository) and uploads it.
    #[command(name = "ingest_dir")]
    IngestDir {
        /// Directory to ingest.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Ingests a git commit of the repository and uploads it.
    #[command(name = "ingest_git_commit")]
    IngestGitCommit {
        /// Commit to ingest.
        #[arg(long)]
        commit: String,
    },
    /// Ingests HEAD plus the changes in the working directory and uploads it.
    #[command(name = "ingest_git_working_dir")]
    IngestGitWorkingDir,
    /// Creates and uploads a git bundle of `basis..ref` from the repository.
    #[command(name = "publish_git_bundle")]
    PublishGitBundle {
        /// Basis of the bundle (excluded commits).
        #[arg(long)]
        basis: String,
        /// Ref to bundle.
        #[arg(long = "ref", default_value = "master")]
        reference: String,
        /// How long the bundlestore keeps the bundle.
        #[arg(long, default_value = "180days", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Output::Location)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The uploaded bundle's URL.
    Location,
    /// A snapshot id for the bundle's commit.
    #[value(name = "snapshot-id")]
    SnapshotId,
}

#[derive(Subcommand, Debug)]
pub enum Read {
    /// Concatenates files from a snapshot to stdout.
    Cat {
        /// Snapshot to read from.
        #[arg(long)]
        id: String,
        /// Files, relative to the snapshot's root.
        files: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Export {
    /// Fetches a snapshot's commit into the repository and prints its sha.
    #[command(name = "to_git_commit")]
    ToGitCommit {
        /// Snapshot to export.
        #[arg(long)]
        id: String,
    },
}

/// Runs the command in the current directory's repository; returns what to print on stdout.
pub async fn run(args: Args) -> anyhow::Result<Vec<u8>> {
    let cwd = std::env::current_dir().context("cannot determine the current directory")?;
    let url = resolve_bundlestore_url(
        args.bundlestore_url.as_deref(),
        std::env::var(BUNDLESTORE_URL_ENV).ok().as_deref(),
        std::env::var_os("HOME").map(PathBuf::from).as_deref(),
        std::env::var("SCOOT_ID").ok().as_deref(),
    )?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(scoot_security::ClientTls::new(ca, None).context("-tls_ca")?),
        None => None,
    };
    let (store, location) = open_store(&url, tls)?;
    let config = GitDbConfig {
        git_timeout: args.git_timeout,
        ..GitDbConfig::default()
    };
    let db = GitDb::open(cwd.clone(), store, config)
        .await
        .with_context(|| {
            format!(
                "scoot-snapshot-db must run inside a git repository ({} is not in one)",
                cwd.display()
            )
        })?;
    execute(&args.command, &db, &location, &cwd).await
}

/// Runs one command against `db`. `location` is the bundlestore's base location (an URL ending
/// in `/` or a directory) for printing where a bundle went; relative paths are taken from `cwd`.
pub async fn execute(
    command: &Command,
    db: &GitDb,
    location: &str,
    cwd: &Path,
) -> anyhow::Result<Vec<u8>> {
    let line = |text: String| Ok(format!("{text}\n").into_bytes());
    match command {
        Command::Create(Create::IngestDir { dir }) => {
            line(db.ingest_dir(&cwd.join(dir)).await?.to_string())
        }
        Command::Create(Create::IngestGitCommit { commit }) => {
            line(db.ingest_git_commit(commit).await?.to_string())
        }
        Command::Create(Create::IngestGitWorkingDir) => {
            line(db.ingest_git_working_dir().await?.to_string())
        }
        Command::Create(Create::PublishGitBundle {
            basis,
            reference,
            ttl,
            output,
        }) => {
            if basis.is_empty() || reference.is_empty() {
                bail!("publish_git_bundle needs a --basis and a --ref");
            }
            let expiry = SystemTime::now().checked_add(*ttl);
            let published = db.publish_git_bundle(basis, reference, expiry).await?;
            match output {
                Output::Location => line(join_location(location, &published.name)),
                Output::SnapshotId => line(published.id.to_string()),
            }
        }
        Command::Read(Read::Cat { id, files }) => {
            let mut out = Vec::new();
            for file in files {
                let data = db
                    .read_file(id, file)
                    .await?
                    .with_context(|| format!("{file} is not in snapshot {id}"))?;
                out.extend_from_slice(&data);
            }
            Ok(out)
        }
        Command::Export(Export::ToGitCommit { id }) => line(db.export_git_commit(id, cwd).await?),
    }
}

fn join_location(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

/// The bundlestore URL: the flag, else `$SCOOT_BUNDLESTORE_URL`, else the second line of
/// `<home>/.cloudscootaddr<scoot_id>` as `http://<line>/bundle/`.
pub fn resolve_bundlestore_url(
    flag: Option<&str>,
    env: Option<&str>,
    home: Option<&Path>,
    scoot_id: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(url) = flag.map(str::trim).filter(|url| !url.is_empty()) {
        return Ok(url.to_string());
    }
    if let Some(url) = env.map(str::trim).filter(|url| !url.is_empty()) {
        return Ok(url.to_string());
    }
    let addr_file =
        home.map(|home| home.join(format!(".cloudscootaddr{}", scoot_id.unwrap_or(""))));
    let from_file = addr_file.as_ref().and_then(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let line = text.lines().nth(1)?.trim().to_string();
        (!line.is_empty()).then_some(line)
    });
    match from_file {
        Some(addr) => Ok(format!("http://{addr}/bundle/")),
        None => bail!(
            "no bundlestore: pass --bundlestore_url, set ${BUNDLESTORE_URL_ENV}, or put the apiserver's host:port on the second line of {}",
            addr_file.map_or_else(
                || "~/.cloudscootaddr$SCOOT_ID ($HOME is not set)".to_string(),
                |f| f.display().to_string()
            )
        ),
    }
}

/// The store at `url` and its base location for messages: a directory for an absolute path or
/// `file://` URL, else an HTTP bundlestore (over TLS trusting `tls`'s CA, when given).
pub fn open_store(
    url: &str,
    tls: Option<scoot_security::ClientTls>,
) -> anyhow::Result<(Arc<dyn Store>, String)> {
    let dir = url
        .strip_prefix("file://")
        .or_else(|| url.starts_with('/').then_some(url));
    if let Some(dir) = dir {
        let store = FileStore::new(PathBuf::from(dir))
            .with_context(|| format!("cannot open bundlestore directory {dir}"))?;
        let location = store.dir().display().to_string();
        return Ok((Arc::new(store), location));
    }
    let url = match (&tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_string(),
    };
    let url = url.as_str();
    let options = HttpStoreOptions {
        tls,
        ..HttpStoreOptions::default()
    };
    let store = HttpStore::with_options(url, options)
        .with_context(|| format!("cannot use bundlestore {url}"))?;
    let location = store.base_url().to_string();
    Ok((Arc::new(store), location))
}
