//! The admin API: HTTP/1.1 + JSON on a Unix socket (mode 0660), versioned
//! under `/v1`. Wire types live in `ward-api`. Errors become HTTP statuses in
//! exactly one place ([`AdminError::status`]). Every request is logged with
//! the caller's uid (SO_PEERCRED); state-changing ones are audited.

use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span};
use ward_api::audit::{AdminAction, AuditEvent};

use crate::control::{Control, ControlError};

/// Largest request body read.
const MAX_BODY: usize = 4 << 20;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such path.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// A malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Wrong method for the path.
    #[error("method not allowed")]
    Method,
    /// A reload was refused; the error as the reload recorded it.
    #[error("{0}")]
    ReloadRejected(String),
    /// The control layer refused or failed.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl AdminError {
    /// The one place errors become HTTP statuses.
    fn status(&self) -> StatusCode {
        match self {
            AdminError::NotFound(_) | AdminError::Control(ControlError::NoDevice(_)) => {
                StatusCode::NOT_FOUND
            }
            AdminError::Method => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::ReloadRejected(_) => StatusCode::CONFLICT,
            AdminError::Control(
                ControlError::Load(_)
                | ControlError::ListenersChanged
                | ControlError::PolicyQuarantine { .. }
                | ControlError::Candidate(_)
                | ControlError::Pending(_)
                | ControlError::NothingPending,
            ) => StatusCode::CONFLICT,
            AdminError::Control(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec_pretty(body).expect("api types serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("static response parts are valid")
}

async fn route(
    control: &Control,
    uid: u32,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, AdminError> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    // Bodies are read whole, up to MAX_BODY (a site policy is far smaller).
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| AdminError::BadRequest(format!("request body: {e}")))?
        .to_bytes();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ok = |v: serde_json::Value| Ok(json(StatusCode::OK, &v));
    match (method, segments.as_slice()) {
        (Method::GET, ["live"]) => ok(serde_json::json!({"live": true})),
        (Method::GET, ["ready"]) => ok(serde_json::json!({"ready": true})),
        (Method::GET, ["v1", "status"]) => Ok(json(StatusCode::OK, &control.status().await)),
        (Method::GET, ["v1", "devices"]) => Ok(json(StatusCode::OK, &control.devices().await)),
        (Method::GET, ["v1", "devices", id]) => {
            Ok(json(StatusCode::OK, &control.device(id).await?))
        }
        (Method::GET, ["v1", "flows"]) => Ok(json(StatusCode::OK, &control.flows())),
        (Method::GET, ["v1", "evidence"]) => Ok(json(StatusCode::OK, &control.evidence().await)),
        (Method::GET, ["v1", "policy"]) => Ok(json(StatusCode::OK, &*control.plan())),
        (Method::GET, ["v1", "observed"]) => {
            let since = match query.split('&').find_map(|kv| kv.strip_prefix("since=")) {
                None => 0,
                Some(v) => v.parse().map_err(|_| {
                    AdminError::BadRequest(format!("since={v}: expected Unix seconds"))
                })?,
            };
            Ok(json(StatusCode::OK, &control.observed(since)))
        }
        (Method::POST, ["v1", "reload"]) => {
            control.proxy().audit.record(AuditEvent::Admin {
                action: AdminAction::Reload,
                uid,
                device: None,
                closed: None,
                revision: None,
            });
            let r = control.reload(&format!("api uid={uid}")).await;
            if r.ok {
                Ok(json(StatusCode::OK, &r))
            } else {
                Err(AdminError::ReloadRejected(r.error.unwrap_or_default()))
            }
        }
        (Method::POST, ["v1", "policy", "apply"]) => {
            let req: ward_api::ApplyRequest = serde_json::from_slice(&body)
                .map_err(|e| AdminError::BadRequest(format!("apply: {e}")))?;
            info!(uid, source = %req.source, confirm_within = ?req.confirm_within_secs, "admin: policy apply");
            Ok(json(StatusCode::OK, &control.apply_policy(req, uid).await?))
        }
        (Method::POST, ["v1", "policy", "confirm"]) => {
            info!(uid, "admin: policy confirm");
            Ok(json(StatusCode::OK, &control.confirm(uid).await?))
        }
        (Method::POST, ["v1", "devices", id, "quarantine"]) => {
            info!(uid, device = id, "admin: quarantine");
            Ok(json(StatusCode::OK, &control.quarantine(id, uid).await?))
        }
        (Method::POST, ["v1", "devices", id, "release"]) => {
            info!(uid, device = id, "admin: release");
            Ok(json(StatusCode::OK, &control.release(id, uid).await?))
        }
        (
            _,
            ["live" | "ready"]
            | [
                "v1",
                "status" | "devices" | "flows" | "policy" | "reload" | "observed",
            ]
            | ["v1", "devices", _]
            | ["v1", "policy", "apply" | "confirm"]
            | ["v1", "devices", _, _],
        ) => Err(AdminError::Method),
        _ => Err(AdminError::NotFound(path)),
    }
}

/// Bind the admin socket at `path` (its directory is created; a stale
/// socket file is replaced), mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serve the admin API until `shutdown`.
pub fn spawn_admin(
    tracker: &TaskTracker,
    listener: UnixListener,
    control: Arc<Control>,
    shutdown: CancellationToken,
) {
    let handler = move |req: Request<Incoming>, caller: Option<u32>| {
        let control = control.clone();
        let uid = caller.unwrap_or(u32::MAX);
        let span = info_span!("admin", method = %req.method(), path = %req.uri().path(), uid);
        async move {
            match route(&control, uid, req).await {
                Ok(r) => r,
                Err(e) => json(
                    e.status(),
                    &ward_api::ApiError {
                        error: e.to_string(),
                    },
                ),
            }
        }
        .instrument(span)
    };
    super::http::spawn_serve(tracker, "admin", listener, handler, shutdown);
}
