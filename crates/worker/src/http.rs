//! The worker's HTTP endpoints.
//!
//! * `/health`: 200 `ok` when the worker can take work; 503 with the reason while it is booting,
//!   unhealthy or draining (Scoot always answered 200, which left orchestrators blind). A
//!   second line says what the sandbox can do on this machine, a third the platform properties
//!   the worker offers.
//! * `/output/`: the retained output files; `/output/<name>`: a page that tails the file;
//!   `/output/<name>?content=true`: its raw bytes, with Range and Last-Modified support.
//!   Unknown names are 404; outputs already removed to bound disk use are 410.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use scoot_runner::output::{OutputLookup, OutputStore};
use scoot_runner::queue::{QueueRunner, WorkerPhase};
use tower_http::services::ServeFile;

#[derive(Clone)]
pub struct HttpState {
    pub runner: QueueRunner,
    pub outputs: Arc<OutputStore>,
    /// What the sandbox can do here (`sandbox: host-tools, rootfs`, `sandbox: off`, or
    /// `sandbox: unavailable: <why>`) and the platform the worker offers (`platform: ...`),
    /// shown after the health.
    pub sandbox: Arc<String>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(scoot_metrics::scoot_root))
        .route("/health", get(health))
        .route("/output/", get(list_outputs))
        .route("/output/{name}", get(output))
        .with_state(state)
        .merge(scoot_metrics::routes())
}

async fn health(State(state): State<HttpState>) -> Response {
    let service = state.runner.statuses().service();
    let (code, body) = match state.runner.phase() {
        WorkerPhase::Ready | WorkerPhase::Running if service.is_healthy => {
            (StatusCode::OK, "ok".to_string())
        }
        WorkerPhase::Ready | WorkerPhase::Running => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not healthy: {}", service.error),
        ),
        WorkerPhase::Booting if service.error.is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not initialized".to_string(),
        ),
        WorkerPhase::Booting => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not initialized: {}", service.error),
        ),
        WorkerPhase::Draining | WorkerPhase::Stopped => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_string())
        }
    };
    (code, format!("{body}\n{}\n", state.sandbox)).into_response()
}

async fn list_outputs(State(state): State<HttpState>) -> Html<String> {
    let items: String = state
        .outputs
        .names()
        .iter()
        .map(|name| format!("<li><a href=\"/output/{name}\">{name}</a></li>\n"))
        .collect();
    Html(format!(
        "<!doctype html><title>worker outputs</title><h1>Outputs</h1><ul>\n{items}</ul>\n"
    ))
}

#[derive(serde::Deserialize)]
struct OutputParams {
    content: Option<String>,
}

async fn output(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    Query(params): Query<OutputParams>,
    request: Request,
) -> Response {
    let path = match state.outputs.lookup(&name) {
        OutputLookup::Found(path) => path,
        OutputLookup::Gone => {
            return (
                StatusCode::GONE,
                format!("output {name} has been removed\n"),
            )
                .into_response();
        }
        OutputLookup::NotFound => {
            return (StatusCode::NOT_FOUND, format!("no output named {name}\n")).into_response();
        }
    };
    if params.content.as_deref() != Some("true") {
        return Html(tail_page(&name)).into_response();
    }
    let mut response = match ServeFile::new(&path).try_call(request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(err) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {name}: {err}\n"),
            )
                .into_response();
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if let Ok(id) = HeaderValue::from_str(&name) {
        headers.insert("x-resource-id", id);
    }
    response
}

/// A page that follows a growing output file by asking for the bytes past what it has.
fn tail_page(name: &str) -> String {
    // `name` passed OutputStore::lookup, so it is `<digits>-<stream>` and safe to embed.
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>{name}</title>
<style>body{{font-family:monospace;margin:1em}}pre{{white-space:pre-wrap}}</style></head>
<body><h3>{name} <a href="/output/{name}?content=true">raw</a></h3><pre id="out"></pre>
<script>
const out = document.getElementById("out");
let offset = 0;
async function poll() {{
  try {{
    const r = await fetch("/output/{name}?content=true", {{headers: {{Range: "bytes=" + offset + "-"}}}});
    if (r.status === 200 || r.status === 206) {{
      const text = await r.text();
      offset += new TextEncoder().encode(text).length;
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 4;
      out.textContent += text;
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    }} else if (r.status !== 416) {{
      out.textContent += "\n[" + r.status + " " + r.statusText + "]";
      return;
    }}
  }} catch (e) {{}}
  setTimeout(poll, 1000);
}}
poll();
</script></body></html>
"#
    )
}
