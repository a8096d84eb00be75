//! Web pages of the cluster on the scheduler's HTTP port, beside [`crate::admin`]:
//!
//! * `/` redirects to `/ui/`;
//! * `/ui/`: jobs, newest first; `?status=` (`active`, `finished`, or a phase such as `running`
//!   or `failed`), `?requestor=` (exact), `?page=N` (50 a page);
//! * `/ui/jobs/<id>`: a job and its tasks (`?page=N`); an unknown id is a 404 page;
//! * `/ui/workers`: every worker, with offline/reinstate buttons that post to the admin routes;
//! * `/ui/operations`: remote executions (`?page=N`);
//! * `/ui/static/ui.css`, `/ui/static/ui.js`: the pages' only style and script.
//!
//! Any page with `?fragment=1` is just its main section, which the page's script fetches every
//! 2 s. Data comes from the loop's snapshots ([`crate::overview`], via [`SchedulerApi`]) and the
//! operation [`Tracker`]; the saga log is never read. Pages carry a Content-Security-Policy that
//! allows only the scheduler's own script and style, so nothing is loaded from elsewhere, and
//! text that would inject markup is escaped by the templates ([`pages`]). The pages themselves
//! are open to whoever reaches the port, as `/health` is; only the admin actions need a token.

pub mod format;
pub mod operations;
pub mod pages;
pub mod paging;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::api::{ApiError, SchedulerApi};
use crate::overview::JobQuery;
use crate::reapi::operations::Tracker;
use pages::{Frame, Pages, RenderError};
use paging::{BadPage, PAGE_SIZE};
use views::{JobFilter, StatusFilter, UnknownStatus};

const CSS: &str = include_str!("static/ui.css");
const JS: &str = include_str!("static/ui.js");

/// Only this scheduler's script, style and requests; no frames, plugins or foreign forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
pub struct Ui {
    api: SchedulerApi,
    tracker: Arc<Tracker>,
    pages: Arc<Pages>,
    /// Whether the admin routes want a token (`-auth_tokens`).
    tokens: bool,
}

impl Ui {
    pub fn new(api: SchedulerApi, tracker: Arc<Tracker>, pages: Arc<Pages>, tokens: bool) -> Ui {
        Ui {
            api,
            tracker,
            pages,
            tokens,
        }
    }
}

/// The pages' routes.
pub fn router(ui: Ui) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(jobs))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/workers", get(workers))
        .route("/ui/operations", get(operations))
        .route(
            "/ui/static/ui.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/ui/static/ui.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .route("/ui/{*rest}", get(not_found))
        .with_state(ui)
}

/// Why a page could not be shown; each is a page of its own.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Page(#[from] BadPage),
    #[error(transparent)]
    Status(#[from] UnknownStatus),
    #[error(
        "no job {0:?} is running or among the recently finished ones this scheduler remembers; \
         `scootcl get_job_status` reads older jobs from the saga log"
    )]
    UnknownJob(String),
    #[error("there is no page {0:?}")]
    NoSuchPage(String),
    #[error("{0}")]
    Scheduler(#[from] ApiError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            UiError::Page(_) | UiError::Status(_) => StatusCode::BAD_REQUEST,
            UiError::UnknownJob(_) | UiError::NoSuchPage(_) => StatusCode::NOT_FOUND,
            UiError::Scheduler(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn heading(&self) -> &'static str {
        match self {
            UiError::Page(_) | UiError::Status(_) => "Bad request",
            UiError::UnknownJob(_) => "Unknown job",
            UiError::NoSuchPage(_) => "Not found",
            UiError::Scheduler(_) => "Scheduler unavailable",
            UiError::Render(_) => "Page error",
        }
    }
}

/// A rendered page or fragment, with the headers every page carries.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(headers);
    response
}

fn secure(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Live data: never shown from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Fetched again on each page load, so an upgraded scheduler's pages never run old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

type Params = Query<HashMap<String, String>>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str)
}

fn frame(ui: &Ui, params: &Params, section: &'static str, title: String) -> Frame {
    Frame {
        section,
        title,
        fragment: param(params, "fragment") == Some("1"),
        tokens: ui.tokens,
        taken: format::timestamp(SystemTime::now()),
    }
}

/// Renders `page`, or the error page for what went wrong (a plain-text answer if even that
/// cannot be rendered).
fn respond(ui: &Ui, frame: Frame, page: Result<String, UiError>) -> Response {
    let error = match page {
        Ok(body) => return html(StatusCode::OK, body),
        Err(error) => error,
    };
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(%error, "web page failed");
    }
    let frame = Frame {
        section: "",
        title: error.heading().to_string(),
        ..frame
    };
    match ui.pages.error(&frame, error.heading(), &error.to_string()) {
        Ok(body) => html(status, body),
        Err(render) => {
            tracing::error!(error = %render, "cannot render the error page");
            (status, format!("{error}\n")).into_response()
        }
    }
}

async fn jobs(State(ui): State<Ui>, params: Params) -> Response {
    let frame = frame(&ui, &params, "jobs", "Jobs".into());
    let page = jobs_page(&ui, &frame, &params).await;
    respond(&ui, frame, page)
}

async fn jobs_page(ui: &Ui, frame: &Frame, params: &Params) -> Result<String, UiError> {
    let filter = JobFilter {
        status: StatusFilter::parse(param(params, "status"))?,
        requestor: param(params, "requestor").unwrap_or("").trim().to_string(),
    };
    let number = paging::parse_page(param(params, "page"))?;
    let overview = ui.api.overview().await?;
    let view = views::jobs(&overview, &filter, number);
    Ok(ui.pages.jobs(&frame_at(frame, overview.taken), &view)?)
}

async fn job(State(ui): State<Ui>, Path(id): Path<String>, params: Params) -> Response {
    let frame = frame(&ui, &params, "jobs", format!("Job {id}"));
    let page = job_page(&ui, &frame, &params, id).await;
    respond(&ui, frame, page)
}

async fn job_page(ui: &Ui, frame: &Frame, params: &Params, id: String) -> Result<String, UiError> {
    let number = paging::parse_page(param(params, "page"))?;
    let query = JobQuery {
        job_id: id.clone(),
        tasks: paging::rows(number, PAGE_SIZE),
    };
    let detail = ui
        .api
        .job_detail(query)
        .await?
        .ok_or(UiError::UnknownJob(id))?;
    let view = views::job(&detail, number);
    Ok(ui.pages.job(&frame_at(frame, detail.taken), &view)?)
}

async fn workers(State(ui): State<Ui>, params: Params) -> Response {
    let frame = frame(&ui, &params, "workers", "Workers".into());
    let page = workers_page(&ui, &frame).await;
    respond(&ui, frame, page)
}

async fn workers_page(ui: &Ui, frame: &Frame) -> Result<String, UiError> {
    let overview = ui.api.overview().await?;
    let view = views::workers(&overview);
    Ok(ui.pages.workers(&frame_at(frame, overview.taken), &view)?)
}

async fn operations(State(ui): State<Ui>, params: Params) -> Response {
    let frame = frame(&ui, &params, "operations", "Operations".into());
    let page = operations_page(&ui, &frame, &params);
    respond(&ui, frame, page)
}

fn operations_page(ui: &Ui, frame: &Frame, params: &Params) -> Result<String, UiError> {
    let number = paging::parse_page(param(params, "page"))?;
    let listed = ui
        .tracker
        .page(paging::rows(number, PAGE_SIZE).start, PAGE_SIZE);
    let view = operations::operations(&listed, number, SystemTime::now());
    Ok(ui.pages.operations(frame, &view)?)
}

async fn not_found(State(ui): State<Ui>, Path(rest): Path<String>, params: Params) -> Response {
    let frame = frame(&ui, &params, "", "Not found".into());
    respond(&ui, frame, Err(UiError::NoSuchPage(format!("/ui/{rest}"))))
}

/// `frame` stamped with when its data was taken.
fn frame_at(frame: &Frame, taken: SystemTime) -> Frame {
    Frame {
        taken: format::timestamp(taken),
        ..frame.clone()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use scoot_core::{Command, RunId, RunState};
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use std::time::Duration;

    use crate::fake_worker::{FakeWorker, PATIENCE, Script, TestScheduler};
    use crate::job::{JobDefinition, TaskDefinition};

    struct Answer {
        status: StatusCode,
        headers: axum::http::HeaderMap,
        body: String,
    }

    async fn get(app: &Router, uri: &str) -> Answer {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    fn pages_of(sched: &TestScheduler, tokens: bool) -> Router {
        let tracker = Tracker::new(sched.api.clone(), CancellationToken::new());
        let pages = Arc::new(Pages::new().unwrap());
        router(Ui::new(sched.api.clone(), tracker, pages, tokens))
    }

    fn job(tag: &str, argv: &[&str]) -> JobDefinition {
        JobDefinition {
            tasks: vec![TaskDefinition {
                task_id: "task-1".into(),
                command: Command {
                    argv: argv.iter().map(|a| a.to_string()).collect(),
                    ..Command::default()
                },
            }],
            tag: tag.into(),
            requestor: "alice".into(),
            ..JobDefinition::default()
        }
    }

    #[tokio::test]
    async fn the_pages_show_jobs_tasks_and_workers_as_the_loop_has_them() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let app = pages_of(&sched, false);
        let evil = "<script>document.title='pwned'</script>";
        let running = sched
            .api
            .run_job(job(evil, &["sleep", "30"]))
            .await
            .unwrap();
        worker.until("the run", |r| r.runs.len() == 1).await;

        let root = get(&app, "/").await;
        assert_eq!(root.status, StatusCode::SEE_OTHER);
        assert_eq!(root.headers[header::LOCATION], "/ui/");

        let jobs = get(&app, "/ui/").await;
        assert_eq!(jobs.status, StatusCode::OK);
        assert!(jobs.body.contains(&running), "{}", jobs.body);
        assert!(
            jobs.body.contains("&lt;script&gt;document.title"),
            "{}",
            jobs.body
        );
        assert!(!jobs.body.contains(evil));
        assert!(
            jobs.headers[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert_eq!(jobs.headers[header::CACHE_CONTROL], "no-store");

        // The task's page shows the worker running it, and its output once RUNNING is reported.
        let url = format!("/ui/jobs/{running}");
        let page = tokio::time::timeout(PATIENCE, async {
            loop {
                let page = get(&app, &url).await;
                if page.body.contains("state running") {
                    return page;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the job page never showed the task running");
        assert!(page.body.contains("<td>w</td>"), "{}", page.body);
        assert!(page.body.contains("sleep 30"), "{}", page.body);

        let workers = get(&app, "/ui/workers").await;
        assert!(
            workers.body.contains("state running\">running"),
            "{}",
            workers.body
        );
        assert!(
            workers
                .body
                .contains(&format!("href=\"&#x2f;ui&#x2f;jobs&#x2f;{running}"))
        );
        assert!(
            !workers.body.contains("id=\"token\""),
            "a token field without tokens"
        );

        worker.finish(&RunId("0".into()), |s| {
            s.state = RunState::Complete;
            s.exit_code = 4;
        });
        sched.ended(&running).await;
        let finished = get(&app, &url).await;
        assert!(
            finished.body.contains("state failed\">failed"),
            "{}",
            finished.body
        );
        assert!(
            finished.body.contains("<td class=\"num\">4</td>"),
            "{}",
            finished.body
        );
        let failed = get(&app, "/ui/?status=failed&requestor=alice").await;
        assert!(failed.body.contains(&running), "{}", failed.body);
        let others = get(&app, "/ui/?status=failed&requestor=bob").await;
        assert!(!others.body.contains(&running));
        assert!(others.body.contains("No jobs."), "{}", others.body);
    }

    #[tokio::test]
    async fn unknown_ids_bad_queries_and_far_pages() {
        let sched = TestScheduler::start(&[], 0).await;
        let app = pages_of(&sched, true);
        let unknown = get(&app, "/ui/jobs/no-such-job").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert!(unknown.body.contains("Unknown job"), "{}", unknown.body);
        assert!(
            unknown.body.contains("no job &quot;no-such-job&quot;"),
            "{}",
            unknown.body
        );

        let far = get(&app, "/ui/?page=99999999999999999999999999").await;
        assert_eq!(far.status, StatusCode::OK);
        let far_ops = get(&app, "/ui/operations?page=18446744073709551615").await;
        assert_eq!(far_ops.status, StatusCode::OK);
        assert!(far_ops.body.contains("No operations."), "{}", far_ops.body);
        let far_tasks = get(&app, "/ui/jobs/no-such-job?page=99999999999999999999").await;
        assert_eq!(far_tasks.status, StatusCode::NOT_FOUND);

        for bad in ["/ui/?page=two", "/ui/?page=-1", "/ui/?status=%3Cb%3E"] {
            let answer = get(&app, bad).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(!answer.body.contains("<b>"), "{}", answer.body);
        }
        assert_eq!(
            get(&app, "/ui/nothing/here").await.status,
            StatusCode::NOT_FOUND
        );

        let fragment = get(&app, "/ui/workers?fragment=1").await;
        assert!(!fragment.body.contains("<html"), "{}", fragment.body);
        assert!(
            fragment.body.contains("<h1>Workers</h1>"),
            "{}",
            fragment.body
        );
        let full = get(&app, "/ui/workers").await;
        assert!(
            full.body.contains("id=\"token\""),
            "no token field with tokens on"
        );

        let js = get(&app, "/ui/static/ui.js").await;
        assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript");
        assert!(js.body.contains("fragment"));
        let css = get(&app, "/ui/static/ui.css").await;
        assert_eq!(css.headers[header::CONTENT_TYPE], "text/css");
    }
}
