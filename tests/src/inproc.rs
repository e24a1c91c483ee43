//! Gateways inside the test process: the same `wardd` start order and serve
//! loop (`ward_gateway::daemon::Gateway`), with the shutdown future and the
//! reload triggers in the test's hands, so the data path, reload and drain
//! can be checked in seconds and timed precisely.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use ward_api::audit::{AuditEvent, Record};
use ward_gateway::config::{Config, Overrides};
use ward_gateway::control::{Control, Sources};
use ward_gateway::daemon::Gateway;
use ward_gateway::ops::telemetry::Guard;

/// A gateway serving on the test's runtime.
pub struct InProcess {
    control: Arc<Control>,
    stop: Option<oneshot::Sender<()>>,
    /// Send a trigger name to reload, as SIGHUP does.
    pub reload: mpsc::Sender<String>,
    serving: Option<JoinHandle<()>>,
    state_dir: PathBuf,
    addrs: Vec<(String, String)>,
}

impl InProcess {
    /// Start the gateway configured in `config` (as written by
    /// [`crate::harness::write_config`]). Panics with the error if it cannot start.
    pub async fn start(config: &Path) -> InProcess {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// Start, or the start error.
    pub async fn try_start(config: &Path) -> Result<InProcess, ward_gateway::daemon::StartError> {
        let sources = Sources {
            config_file: Some(config.to_owned()),
            overrides: Overrides::default(),
        };
        let cfg = Config::load(Some(config), &sources.overrides).expect("configuration loads");
        let state_dir = cfg.state_dir.clone();
        let gateway = Gateway::start(cfg, sources, &Guard::default()).await?;
        let control = gateway.control();
        let addrs = gateway.addrs().to_vec();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (reload, reloads) = mpsc::channel(4);
        let serving = tokio::spawn(gateway.serve(
            async {
                let _ = stop_rx.await;
            },
            reloads,
        ));
        Ok(InProcess {
            control,
            stop: Some(stop_tx),
            reload,
            serving: Some(serving),
            state_dir,
            addrs,
        })
    }

    /// The control surface.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The bound address labelled `what` (`metrics`, `tunnel-tls`, …).
    pub fn addr(&self, what: &str) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(w, _)| w == what)
            .map(|(_, a)| a.as_str())
    }

    /// Begin the shutdown (like SIGTERM); [`InProcess::stopped`] waits for its end.
    pub fn begin_stop(&mut self) -> Instant {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        Instant::now()
    }

    /// Wait until the serve loop has returned (drained, cut, closed); how
    /// long since `since`.
    pub async fn stopped(&mut self, since: Instant) -> Duration {
        if let Some(h) = self.serving.take() {
            tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("the gateway stops within a minute")
                .expect("the serve task does not panic");
        }
        since.elapsed()
    }

    /// Every event of the audit trail so far.
    pub fn audit(&self) -> Vec<AuditEvent> {
        let text = std::fs::read_to_string(self.state_dir.join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str::<Record>(l)
                    .unwrap_or_else(|e| panic!("audit record does not parse ({e}): {l}"))
                    .event
            })
            .collect()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
