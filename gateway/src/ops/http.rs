//! One HTTP/1.1 serve loop for the admin socket and the metrics port.

use std::convert::Infallible;
use std::future::Future;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Wait after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// A listener the serve loop accepts from; `Caller` is the peer's uid where
/// the socket tells it (SO_PEERCRED on the Unix socket).
pub trait Listener: Send + Sync + 'static {
    /// The accepted stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accept one connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<(Self::Io, Option<u32>)>> + Send;
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, Option<u32>)> {
        let (s, _) = self.accept().await?;
        let uid = s.peer_cred().ok().map(|c| c.uid());
        Ok((s, uid))
    }
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<(Self::Io, Option<u32>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

/// Serve `handler` on `listener` until `shutdown`; open connections are
/// dropped at shutdown too (a `wardctl flow list --watch` must not hold up
/// a stop).
pub fn spawn_serve<L, H, F>(
    tracker: &TaskTracker,
    what: &'static str,
    listener: L,
    handler: H,
    shutdown: CancellationToken,
) where
    L: Listener,
    H: Fn(Request<Incoming>, Option<u32>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (stream, caller) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = listener.accept_one() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, listener = what, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let (handler, shutdown) = (handler.clone(), shutdown.clone());
            t.spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, caller).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    r = conn => if let Err(e) = r { debug!(error = %e, listener = what, "connection ended") },
                }
            });
        }
    });
}
