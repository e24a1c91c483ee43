//! The access leg: a TLS client with a site certificate (a vendor's service
//! station, a clinician's tool) reaching a device port, allowed by an
//! inbound flow and its maintenance window.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use ward_api::audit::FlowAction;
use ward_policy::Leg;

use super::conn::{self, Matched, tcp_connect};
use super::handshake::{self, Expect};
use super::registry::Grant;
use super::state::ProxyState;
use crate::transport::relay;

/// Serve one connection accepted by an access listener.
pub async fn serve(
    stream: TcpStream,
    src: SocketAddr,
    state: Arc<ProxyState>,
    cut: CancellationToken,
) {
    let Ok(listener) = stream.local_addr() else {
        return;
    };
    // Before the handshake: a source may not tie up handshakes either.
    let Some(_slot) = conn::source_slot(&state, src) else {
        return;
    };
    let config = state.tls().access_server.clone();
    let Some((tls, peer)) =
        handshake::accept_tls(&state, config, stream, src, Leg::Access, Expect::Spiffe).await
    else {
        return;
    };
    let rule = match state
        .plan()
        .authorize_client(&peer.identity, listener, state.clock.now())
    {
        Ok(r) => r.clone(),
        Err(denied) => {
            warn!(%src, %listener, peer = %peer.identity, reason = %denied, "client refused");
            state.audit.record(conn::refused(
                Leg::Access,
                src,
                Some(listener),
                None,
                None,
                Some(&peer.identity),
                &denied,
            ));
            return;
        }
    };
    let span = info_span!("tunnel", flow = %rule.flow, peer = %peer.identity, src = %src, leg = %Leg::Access);
    async move {
        let m = Matched {
            flow: rule.flow.clone(),
            device: rule.device.clone(),
            peer: Some(peer.identity),
            peer_serial: peer.serial,
            src,
            grant: Grant::Access {
                listener,
                target: rule.target,
            },
        };
        let Some(admitted) = conn::admit(&state, &m, rule.max_connections, &cut) else {
            return;
        };
        let device = match tcp_connect(rule.target, rule.connect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "device unreachable");
                state
                    .audit
                    .record(m.event(FlowAction::Failed, Some(e.to_string())));
                return;
            }
        };
        info!(device = %rule.device, "client connected to device");
        state.audit.record(m.event(FlowAction::Allowed, None));
        let (near_r, near_w) = relay::io(tokio::io::split(tls));
        let (far_r, far_w) = relay::io(device.into_split());
        // The client's cleartext enters here: its guard reads it before
        // the device does.
        // (A device port has no declared protocol: learning notes facts
        // only where a guard reads them.)
        let (up, down) =
            super::outbound::Guard::of(&state, &m, rule.guard.clone(), None).wrap(near_r, far_r);
        admitted
            .relay((up, near_w), (down, far_w), rule.idle_timeout)
            .await;
    }
    .instrument(span)
    .await
}
