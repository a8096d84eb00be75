//! The sandbox engine: an [`Execer`] that runs each process through the launcher, on top of
//! the OS engine (which tracks the launcher and everything under it in the run's cgroup,
//! copies the output, applies the memory cap and stops the run).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use scoot_core::{Command, RunId};
use scoot_runner::execer::identity::Identity;
use scoot_runner::execer::os::OsExecer;
use scoot_runner::execer::{
    ExecError, ExecSpec, Execer, Process, ProcessOutcome, SandboxLayout, SandboxRequest,
};
use scoot_runner::output::{OutputStore, RunOutputs};

use crate::spec::{Filesystem, LAUNCHER_ARG, LaunchSpec, SANDBOX_HOSTNAME};

/// How a worker's sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The program that acts as the launcher when given [`LAUNCHER_ARG`] (the worker's own
    /// binary, which calls [`crate::launcher::run_if_asked`] first thing).
    pub launcher: PathBuf,
    /// Directories a host-tools process must not see (the worker's work, cache and output
    /// directories, where other runs' files are); each appears empty and read-only.
    pub hidden: Vec<PathBuf>,
    /// Most processes a sandboxed run may have; reaching it stops the run.
    pub pids_max: Option<u64>,
    /// Where the launchers' reports go (a private directory of the worker's).
    pub report_dir: PathBuf,
}

/// Runs specs that ask for a sandbox (see [`SandboxRequest`]).
pub struct SandboxExecer {
    config: SandboxConfig,
    os: OsExecer,
}

impl SandboxExecer {
    /// `os` is the OS engine that runs the launchers; its process limit is raised by the
    /// launcher and init.
    pub fn new(config: SandboxConfig, mut os: OsExecer) -> SandboxExecer {
        os.pids_max = config.pids_max.map(|max| max + 1);
        SandboxExecer { config, os }
    }

    fn launch_spec(
        &self,
        spec: &ExecSpec,
        request: &SandboxRequest,
        report: &Path,
    ) -> Result<LaunchSpec, ExecError> {
        let outside = spec.user.unwrap_or_else(Identity::current);
        let (filesystem, working_dir, default_ids) = match request.layout {
            SandboxLayout::HostTools => (
                Filesystem::HostTools {
                    exec_root: request.root.clone(),
                    hidden: self.config.hidden.clone(),
                },
                spec.dir.clone(),
                outside,
            ),
            SandboxLayout::Rootfs => {
                let inside = spec.dir.strip_prefix(&request.root).map_err(|_| {
                    ExecError(format!(
                        "the working directory {} is outside the root {}",
                        spec.dir.display(),
                        request.root.display()
                    ))
                })?;
                (
                    Filesystem::Rootfs {
                        root: request.root.clone(),
                    },
                    Path::new("/").join(inside),
                    Identity { uid: 0, gid: 0 },
                )
            }
        };
        let env = if spec.clear_env {
            spec.env.clone().into_iter().collect()
        } else {
            let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
            env.extend(spec.env.clone());
            env.into_iter().collect()
        };
        Ok(LaunchSpec {
            argv: spec.argv.clone(),
            env,
            filesystem,
            working_dir,
            network: request.network,
            inside_uid: request.uid.unwrap_or(default_ids.uid),
            inside_gid: request.gid.unwrap_or(default_ids.gid),
            outside_uid: outside.uid,
            outside_gid: outside.gid,
            pids_max: self.config.pids_max,
            report: report.to_path_buf(),
        })
    }
}

#[async_trait]
impl Execer for SandboxExecer {
    async fn start(&self, spec: ExecSpec) -> Result<Box<dyn Process>, ExecError> {
        let Some(request) = spec.sandbox.clone() else {
            return Err(ExecError(
                "the sandbox engine was given an unsandboxed spec".into(),
            ));
        };
        let report = tempfile::Builder::new()
            .prefix("launch-")
            .tempfile_in(&self.config.report_dir)
            .map_err(|e| ExecError(format!("cannot create the launcher's report: {e}")))?
            .into_temp_path();
        let launch = self.launch_spec(&spec, &request, &report)?;
        let stdin = serde_json::to_vec(&launch)
            .map_err(|e| ExecError(format!("cannot encode the launch spec: {e}")))?;
        let outputs = spec.outputs.clone();
        let inner = self
            .os
            .start(ExecSpec {
                argv: vec![
                    self.config.launcher.to_string_lossy().into_owned(),
                    LAUNCHER_ARG.to_string(),
                ],
                env: Default::default(),
                clear_env: true,
                dir: spec.dir,
                outputs: spec.outputs,
                // The launcher maps the run's user itself; it must start with the worker's
                // privileges to do so.
                user: None,
                sandbox: None,
                stdin,
            })
            .await?;
        Ok(Box::new(SandboxedProcess {
            inner,
            report,
            outputs,
        }))
    }
}

struct SandboxedProcess {
    inner: Box<dyn Process>,
    /// Removed when the process is dropped.
    report: tempfile::TempPath,
    outputs: Arc<RunOutputs>,
}

impl SandboxedProcess {
    /// A setup failure the launcher reported replaces the exit it made.
    fn checked(&self, outcome: ProcessOutcome) -> ProcessOutcome {
        match std::fs::read_to_string(&self.report) {
            Ok(message) if !message.is_empty() => {
                let message = format!("sandbox: {message}");
                self.outputs.write_stderr(format!("{message}\n").as_bytes());
                ProcessOutcome::Failed { message }
            }
            _ => outcome,
        }
    }
}

#[async_trait]
impl Process for SandboxedProcess {
    async fn wait(&mut self) -> ProcessOutcome {
        let outcome = self.inner.wait().await;
        self.checked(outcome)
    }

    async fn kill(&mut self) -> ProcessOutcome {
        let outcome = self.inner.kill().await;
        self.checked(outcome)
    }
}

/// Runs a command from the host in a host-tools sandbox as `user` (in `scratch`, which they
/// own), to learn at start whether this machine can make sandboxes (namespaces,
/// `mount_setattr`); the error says why not.
pub async fn probe(
    execer: &SandboxExecer,
    scratch: &Path,
    user: Option<Identity>,
) -> Result<(), String> {
    let store = OutputStore::new(scratch.to_path_buf(), None, 1);
    let probe_run = Command {
        reapi_request: Some(Vec::new()),
        ..Command::default()
    };
    let outputs = Arc::new(
        store
            .create(&RunId::from("probe"), &probe_run)
            .map_err(|e| format!("probe output files: {e}"))?,
    );
    let spec = ExecSpec {
        // Prints what only a sandbox has, so a launcher that does not build one cannot pass.
        argv: vec!["cat".into(), "/proc/sys/kernel/hostname".into()],
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        clear_env: true,
        dir: scratch.to_path_buf(),
        outputs: outputs.clone(),
        user,
        sandbox: Some(SandboxRequest {
            layout: SandboxLayout::HostTools,
            root: scratch.to_path_buf(),
            network: false,
            uid: None,
            gid: None,
        }),
        stdin: Vec::new(),
    };
    let mut process = execer.start(spec).await.map_err(|e| e.0)?;
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), process.wait()).await;
    let stdout = std::fs::read_to_string(&outputs.stdout_path).unwrap_or_default();
    match outcome {
        Ok(ProcessOutcome::Exited(0)) if stdout.trim() == SANDBOX_HOSTNAME => Ok(()),
        Ok(ProcessOutcome::Exited(0)) => Err(format!(
            "{} did not act as the sandbox launcher (a sandboxed process saw the host name \
             {:?})",
            execer.config.launcher.display(),
            stdout.trim()
        )),
        Ok(ProcessOutcome::Failed { message }) => Err(message),
        Ok(other) => Err(format!(
            "a sandboxed probe ended with {other:?}: {}",
            std::fs::read_to_string(&outputs.stderr_path).unwrap_or_default()
        )),
        Err(_) => {
            process.kill().await;
            Err("a sandboxed probe did not end within 30 s".into())
        }
    }
}
