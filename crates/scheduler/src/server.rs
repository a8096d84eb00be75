//! Wires a scheduler together and runs it until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use scoot_bin_util::advertised_addr;
use scoot_blobstore::{BlobStore, TieredBlobStore};
use scoot_cas_client::{CasClient, RemoteBlobSource, ShardSpec, ShardedBlobStore, ShardedCas};
use scoot_cas_services::stores::CasStores;
use scoot_cas_services::{ActionCacheStore, CasConfig};
use scoot_saga::{FileSagaLog, MemorySagaLog, SagaCoordinator, SagaError, SagaLog, SagaLogError};
use scoot_saga_postgres::Candidate;
use scoot_saga_postgres::{PostgresOptions, PostgresSagaLog};
use scoot_security::{ClientSecurity, ServerTls, Tokens};
use scoot_thrift::gate::Gate;
use scoot_thrift::scoot::CloudScootSyncProcessor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::api::SchedulerApi;
use crate::config::{ClusterSource, SagaLogKind, SchedulerConfig};
use crate::discovery::{self, DnsFetcher, Fetcher, LocalProcessFetcher, StaticFileFetcher};
use crate::event_loop::Loop;
use crate::handler::CloudScootHandler;
use crate::leader::{self, Api, Leadership, Role};
use crate::reapi::{self, operations::Tracker};
use crate::wire;
use crate::worker_client::thrift_workers;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot open the saga log: {0}")]
    SagaLog(String),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("thrift server: {0}")]
    Thrift(std::io::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("grpc server: {0}")]
    Grpc(String),
    #[error("web pages: {0}")]
    Pages(#[from] crate::ui::pages::RenderError),
    #[error("{0}")]
    Advertise(String),
    #[error("stepped down: {0}; exiting (restarted, this scheduler becomes a standby)")]
    SteppedDown(String),
}

/// TLS of the scheduler's Thrift and HTTP ports and of its connections to workers; all
/// plaintext by default.
#[derive(Clone, Debug, Default)]
pub struct SchedulerTls {
    /// On the CloudScoot Thrift port (`-thrift_tls`).
    pub thrift: Option<ServerTls>,
    /// On the HTTP port.
    pub http: Option<ServerTls>,
    /// For connections to workers' Thrift ports (`-thrift_tls`, trusting `-tls_ca`).
    pub workers: Option<Arc<rustls::ClientConfig>>,
}

/// Where the Remote Execution API is served, and the stores of the CAS it serves.
pub struct ReapiEndpoint {
    pub listener: TcpListener,
    pub cas: ReapiCas,
    /// TLS on the gRPC port.
    pub tls: Option<ServerTls>,
    /// Tokens every call must carry; `None` serves anyone.
    pub tokens: Option<Tokens>,
    /// TLS and token for the fallback CAS or the shards.
    pub client: ClientSecurity,
    /// Connection, rate, stream and idle limits of the port (`-max_grpc_*`).
    pub limits: scoot_cas_services::limits::GrpcLimits,
}

/// Where the blobs and action results of the Remote Execution API are kept.
pub enum ReapiCas {
    /// In the scheduler's own stores.
    Local {
        stores: CasStores,
        /// Another CAS (the cluster's apiserver) whose blobs are served as if they were in
        /// ours, so that inputs uploaded there can be executed here.
        fallback: Option<String>,
    },
    /// On shards (the apiservers), so that they outlive this scheduler: see
    /// [`scoot_cas_client::sharded`].
    Sharded(ShardSpec),
}

/// The blob store and action cache the REAPI services use, and where they are (for the log).
type ReapiStores = (Arc<dyn BlobStore>, Arc<dyn ActionCacheStore>, String);

fn reapi_stores(cas: ReapiCas, client: &ClientSecurity) -> Result<ReapiStores, SchedulerError> {
    Ok(match cas {
        ReapiCas::Local { stores, fallback } => {
            let blobs: Arc<dyn BlobStore> = match &fallback {
                Some(addr) => {
                    let far = CasClient::connect_lazy(addr, "", client)
                        .map_err(|e| SchedulerError::Grpc(format!("-cas_fallback {addr}: {e}")))?;
                    Arc::new(TieredBlobStore::new(
                        stores.cas,
                        Arc::new(RemoteBlobSource::new(far)),
                    ))
                }
                None => stores.cas,
            };
            (blobs, stores.action_cache, stores.dir.display().to_string())
        }
        ReapiCas::Sharded(spec) => {
            let shards = ShardedCas::connect_lazy(&spec, "", client)
                .map_err(|e| SchedulerError::Grpc(format!("-cas_shards: {e}")))?;
            let described = format!(
                "{} (each blob on {} of them)",
                spec.addrs().join(","),
                spec.replicas()
            );
            (
                Arc::new(ShardedBlobStore::new(&shards)),
                Arc::new(reapi::shards::ShardedActionCache::new(shards)),
                described,
            )
        }
    })
}

/// An open saga log, and for a PostgreSQL one the lease schedulers sharing it take turns by.
struct OpenLog {
    log: Arc<dyn SagaLog>,
    gc_interval: Duration,
    lease: Option<(Arc<PostgresSagaLog>, Duration)>,
}

async fn open_saga_log(kind: &SagaLogKind) -> Result<OpenLog, SchedulerError> {
    let unleased = |log: Arc<dyn SagaLog>, gc_interval: &Duration| OpenLog {
        log,
        gc_interval: *gc_interval,
        lease: None,
    };
    Ok(match kind {
        SagaLogKind::Memory {
            retention,
            gc_interval,
        } => unleased(Arc::new(MemorySagaLog::new(*retention)), gc_interval),
        SagaLogKind::File {
            directory,
            retention,
            gc_interval,
        } => {
            let log = FileSagaLog::open(directory.clone(), *retention)
                .map_err(|e| SchedulerError::SagaLog(format!("{}: {e}", directory.display())))?;
            unleased(Arc::new(log), gc_interval)
        }
        SagaLogKind::Postgres {
            url,
            retention,
            gc_interval,
            pool_size,
            lease,
        } => {
            let options = PostgresOptions {
                url: url.clone(),
                retention: *retention,
                pool_size: *pool_size,
            };
            // Opening connects and migrates, blocking until the database answers.
            let log = tokio::task::spawn_blocking(move || PostgresSagaLog::open(&options))
                .await
                .map_err(|e| SchedulerError::SagaLog(e.to_string()))?
                .map_err(|e| SchedulerError::SagaLog(e.to_string()))?;
            let log = Arc::new(log);
            OpenLog {
                log: log.clone(),
                gc_interval: *gc_interval,
                lease: Some((log, *lease)),
            }
        }
    })
}

/// Serves CloudScoot on `thrift`, `/health` on `http` and, when given, the Remote Execution API
/// until `shutdown` completes.
pub async fn run(
    thrift: TcpListener,
    http: TcpListener,
    tls: SchedulerTls,
    http_tokens: Option<Tokens>,
    reapi: Option<ReapiEndpoint>,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SchedulerError> {
    crate::stats::register();
    scoot_cas_services::stats::register();
    scoot_saga::register_metrics();
    // Before anything starts: templates that do not compile are a bug to report at once.
    let pages = Arc::new(crate::ui::pages::Pages::new()?);
    let OpenLog {
        log,
        gc_interval,
        lease,
    } = open_saga_log(&config.saga_log).await?;
    let sagas = SagaCoordinator::new(log.clone());
    let candidate = match &lease {
        Some(_) => Some(candidate(&thrift, reapi.as_ref(), &config)?),
        None => None,
    };
    // Without a lease this scheduler leads from the start; with one it is a standby until it
    // takes the lease.
    let role = watch::Sender::new(match lease {
        Some(_) => Role::Standby(None),
        None => Role::Leading,
    });
    let leadership = Leadership::new(&role);

    let (job_events_tx, job_events) = mpsc::unbounded_channel();
    let mut scheduling = Loop::new(config.clone())
        .with_workers(thrift_workers(tls.workers))
        .with_job_events(job_events_tx);
    if config.recover_jobs_on_startup && lease.is_none() {
        recover(&sagas, &mut scheduling).await;
    }

    let stop = CancellationToken::new();
    let (requests_tx, requests) = mpsc::channel(1024);
    let api = SchedulerApi::new(requests_tx, sagas.clone());
    let admin_api = api.clone();
    let tracker = Tracker::new(api.clone(), stop.clone());
    let tracker_for_pages = tracker.clone();
    let grpc_server = match reapi {
        Some(endpoint) => {
            let (blobs, action_cache, described) = reapi_stores(endpoint.cas, &endpoint.client)?;
            tracing::info!(
                grpc = %endpoint.listener.local_addr().map_err(SchedulerError::Listener)?,
                cas = %described,
                "remote execution serving"
            );
            let cas = scoot_cas_services::server(
                blobs,
                action_cache,
                CasConfig {
                    exec_enabled: true,
                    ..CasConfig::default()
                },
            );
            let limits = endpoint.limits;
            let stopped = stop.clone().cancelled_owned();
            let routes = gate_grpc(reapi::routes(cas, tracker.clone()), leadership.clone());
            Some(tokio::spawn(async move {
                scoot_cas_services::serve_with_limits(
                    endpoint.listener,
                    routes,
                    endpoint.tls,
                    endpoint.tokens,
                    &limits,
                    stopped,
                )
                .await
            }))
        }
        None => None,
    };

    tracing::info!(
        thrift = %thrift.local_addr().map_err(SchedulerError::Listener)?,
        http = %http.local_addr().map_err(SchedulerError::Listener)?,
        "scheduler serving"
    );
    let thrift_gate = leadership.clone();
    let processor = Arc::new(Gate::new(
        CloudScootSyncProcessor::new(CloudScootHandler::new(
            api,
            tokio::runtime::Handle::current(),
        )),
        move || thrift_gate.refusal(Api::CloudScoot),
    ));
    let thrift_server = tokio::spawn(scoot_thrift::server::serve(
        thrift,
        tls.thrift,
        processor,
        config.thrift,
        stop.clone().cancelled_owned(),
    ));
    let pages = crate::ui::Ui::new(
        admin_api.clone(),
        tracker_for_pages,
        pages,
        http_tokens.is_some(),
    );
    let app = crate::admin::router(admin_api, http_tokens)
        .merge(crate::ui::router(pages))
        .layer(axum::middleware::from_fn_with_state(
            leadership.clone(),
            gate_http,
        ));
    let http_server = tokio::spawn(scoot_security::http::serve(
        http,
        tls.http,
        app,
        stop.clone().cancelled_owned(),
    ));
    let servers = Servers {
        grpc: grpc_server,
        thrift: thrift_server,
        http: http_server,
    };

    let mut shutdown = std::pin::pin!(shutdown);
    let mut holder = None;
    if let (Some((pg, length)), Some(me)) = (lease, candidate) {
        let token = tokio::select! {
            token = leader::campaign(pg.clone(), me.clone(), length, &role, &stop) => token,
            () = &mut shutdown => None,
        };
        let Some(token) = token else {
            stop.cancel();
            return servers.stopped().await;
        };
        pg.fence(token);
        let hold_stop = stop.clone();
        holder = Some(tokio::spawn(async move {
            leader::hold(pg, me, token, length, &hold_stop).await
        }));
        if config.recover_jobs_on_startup {
            recover(&sagas, &mut scheduling).await;
        }
    }

    let gc = scoot_saga::spawn_gc(log, gc_interval);
    let (fetcher, period): (Box<dyn Fetcher>, Duration) = match &config.cluster {
        ClusterSource::LocalProcesses => {
            (Box::new(LocalProcessFetcher), Duration::from_millis(100))
        }
        ClusterSource::StaticFile(path) => (
            Box::new(StaticFileFetcher(path.clone())),
            Duration::from_millis(500),
        ),
        ClusterSource::Dns {
            name,
            port,
            refresh,
        } => (
            Box::new(DnsFetcher {
                name: name.clone(),
                port: *port,
            }),
            *refresh,
        ),
    };
    let (membership_tx, membership) = mpsc::channel(100);
    let watcher = tokio::spawn(discovery::watch(fetcher, period, membership_tx));
    let scheduler = tokio::spawn(scheduling.run(requests, membership, stop.clone()));
    let follower = tokio::spawn(tracker.follow(job_events));
    if role.send_replace(Role::Leading) != Role::Leading {
        tracing::info!("leading");
    }

    let lost = match holder {
        Some(holder) => tokio::select! {
            () = &mut shutdown => None,
            lost = holder => match lost {
                Ok(reason) => reason,
                Err(err) => Some(format!("the lease keeper failed: {err}")),
            },
        },
        None => {
            shutdown.await;
            None
        }
    };
    if let Some(reason) = &lost {
        tracing::error!(%reason, "lost the leader lease; stepping down");
    }
    stop.cancel();
    watcher.abort();
    gc.abort();
    let _ = scheduler.await;
    follower.abort();
    servers.stopped().await?;
    match lost {
        Some(reason) => Err(SchedulerError::SteppedDown(reason)),
        None => {
            tracing::info!("scheduler stopped");
            Ok(())
        }
    }
}

/// The scheduler's servers, which end once `stop` is cancelled.
struct Servers {
    grpc: Option<JoinHandle<Result<(), scoot_cas_services::ServeError>>>,
    thrift: JoinHandle<std::io::Result<()>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Servers {
    async fn stopped(self) -> Result<(), SchedulerError> {
        if let Some(grpc_server) = self.grpc {
            grpc_server
                .await
                .map_err(|e| SchedulerError::Grpc(e.to_string()))?
                .map_err(|e| SchedulerError::Grpc(e.to_string()))?;
        }
        self.thrift
            .await
            .map_err(|e| SchedulerError::Thrift(std::io::Error::other(e)))?
            .map_err(SchedulerError::Thrift)?;
        self.http
            .await
            .map_err(|e| SchedulerError::Http(std::io::Error::other(e)))?
            .map_err(SchedulerError::Http)?;
        Ok(())
    }
}

/// This scheduler as a candidate for the lease: a fresh id, and its ports as other machines
/// reach them.
fn candidate(
    thrift: &TcpListener,
    reapi: Option<&ReapiEndpoint>,
    config: &SchedulerConfig,
) -> Result<Candidate, SchedulerError> {
    let advertised = |flag, listener: &TcpListener| {
        let bound = listener.local_addr().map_err(SchedulerError::Listener)?;
        advertised_addr(
            flag,
            &bound.to_string(),
            bound,
            config.advertise_host.as_deref(),
        )
        .map_err(SchedulerError::Advertise)
    };
    Ok(Candidate {
        id: uuid::Uuid::new_v4().to_string(),
        thrift_addr: advertised("thrift_addr", thrift)?,
        grpc_addr: match reapi {
            Some(endpoint) => advertised("grpc_addr", &endpoint.listener)?,
            None => String::new(),
        },
    })
}

/// 503 with the leader's address on every path but the metrics while this scheduler does not
/// lead (so `/health` tells load balancers which one to use).
async fn gate_http(
    State(leadership): State<Leadership>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let metrics = matches!(request.uri().path(), "/metrics" | "/admin/metrics.json");
    match leadership.refusal(Api::Http) {
        Some(reason) if !metrics => {
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Every REAPI call answers UNAVAILABLE (which Bazel retries) naming the leader's gRPC address
/// while this scheduler does not lead.
fn gate_grpc(routes: Routes, leadership: Leadership) -> Routes {
    async fn gate(
        State(leadership): State<Leadership>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        match leadership.refusal(Api::Reapi) {
            Some(reason) => tonic::Status::unavailable(reason).into_http(),
            None => next.run(request).await,
        }
    }
    Routes::from(
        routes
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(leadership, gate)),
    )
}

/// Puts every unfinished saga's job back in the loop under its original id.
async fn recover(sagas: &SagaCoordinator, scheduling: &mut Loop) {
    let mut delay = Duration::from_millis(500);
    let ids = loop {
        match sagas.active_sagas().await {
            Ok(ids) => break ids,
            Err(err) => {
                tracing::error!(error = %err, "cannot list active sagas; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    let mut recovered = 0;
    for id in ids {
        let saga = match sagas.recover(&id).await {
            Ok(Some(saga)) => saga,
            Ok(None) => continue,
            Err(SagaError::Log(err @ SagaLogError::Unreadable(_))) => {
                tracing::error!(job_id = %id, error = %err,
                    "cannot recover a job whose definition is lost; GetStatus reports it FAILED");
                continue;
            }
            Err(err) => {
                tracing::error!(job_id = %id, error = %err, "cannot recover saga; skipping it");
                continue;
            }
        };
        let state = saga.state();
        if state.is_saga_completed() {
            continue;
        }
        let job = match wire::job_from_saga(state.job()) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(job_id = %id, error = %err,
                    "cannot decode a recovered job; GetStatus reports it FAILED");
                continue;
            }
        };
        let done: Vec<String> = job
            .def
            .tasks
            .iter()
            .filter(|t| state.is_task_completed(&t.task_id))
            .map(|t| t.task_id.clone())
            .collect();
        tracing::info!(job_id = %id, done = done.len(), tasks = job.def.tasks.len(), "recovered job");
        scheduling.add_recovered(job, saga, done).await;
        recovered += 1;
    }
    tracing::info!(recovered, "recovery finished");
}
