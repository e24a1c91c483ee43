//! The admin API: HTTP/1.1 + JSON on a Unix socket (mode 0660), versioned
//! under `/v1`. Wire types live in `ward-api`. Errors become HTTP statuses in
//! exactly one place ([`AdminError::status`]). Every request is logged with
//! the caller's uid (SO_PEERCRED).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::control::Control;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No such path.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// No such device behind this gateway.
    #[error("device {0:?} is not behind this gateway")]
    NoDevice(String),
    /// The request is well formed but refused (e.g. a reload that failed validation).
    #[error("{0}")]
    Rejected(String),
    /// Wrong method for the path.
    #[error("method not allowed")]
    Method,
}

impl AdminError {
    /// The one place errors become HTTP statuses.
    fn status(&self) -> StatusCode {
        match self {
            AdminError::NotFound(_) | AdminError::NoDevice(_) => StatusCode::NOT_FOUND,
            AdminError::Rejected(_) => StatusCode::CONFLICT,
            AdminError::Method => StatusCode::METHOD_NOT_ALLOWED,
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
    // Bodies are not used by any endpoint; drain them so keep-alive works.
    let _ = req.into_body().collect().await;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let ok = |v: serde_json::Value| Ok(json(StatusCode::OK, &v));
    match (method, segments.as_slice()) {
        (Method::GET, ["live"]) => ok(serde_json::json!({"live": true})),
        (Method::GET, ["ready"]) => ok(serde_json::json!({"ready": true})),
        (Method::GET, ["v1", "status"]) => Ok(json(StatusCode::OK, &control.status())),
        (Method::GET, ["v1", "devices"]) => Ok(json(StatusCode::OK, &control.devices())),
        (Method::GET, ["v1", "devices", id]) => control
            .devices()
            .into_iter()
            .find(|d| d.id == *id)
            .map(|d| json(StatusCode::OK, &d))
            .ok_or_else(|| AdminError::NoDevice((*id).to_owned())),
        (Method::GET, ["v1", "flows"]) => Ok(json(StatusCode::OK, &control.flows())),
        (Method::GET, ["v1", "policy"]) => Ok(json(StatusCode::OK, &*control.shared.plan())),
        (Method::POST, ["v1", "reload"]) => {
            control
                .shared
                .audit
                .record("admin", "reload", serde_json::json!({"uid": uid}));
            let r = control.reload(&format!("api uid={uid}"));
            if r.ok {
                Ok(json(StatusCode::OK, &r))
            } else {
                Err(AdminError::Rejected(r.error.unwrap_or_default()))
            }
        }
        (Method::POST, ["v1", "devices", id, "quarantine"]) => {
            info!(uid, device = id, "admin: quarantine");
            control
                .quarantine(id, uid)
                .map(|d| json(StatusCode::OK, &d))
        }
        (Method::POST, ["v1", "devices", id, "release"]) => {
            info!(uid, device = id, "admin: release");
            control.release(id, uid).map(|d| json(StatusCode::OK, &d))
        }
        (
            _,
            ["live" | "ready"]
            | ["v1", "status" | "devices" | "flows" | "policy" | "reload"]
            | ["v1", "devices", _]
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
pub fn spawn_admin(listener: UnixListener, control: Arc<Control>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => { warn!(error = %e, "admin accept failed"); continue; }
                },
            };
            let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            let control = control.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let control = control.clone();
                    let span =
                        info_span!("admin", method = %req.method(), path = %req.uri().path(), uid);
                    async move {
                        let resp = match route(&control, uid, req).await {
                            Ok(r) => r,
                            Err(e) => json(
                                e.status(),
                                &ward_api::ApiError {
                                    error: e.to_string(),
                                },
                            ),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                    .instrument(span)
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    });
}
