//! Logging: `WARD_LOG` (an EnvFilter, default `info`) and `WARD_LOG_FORMAT`
//! (`text` or `json`), to stderr (the journal under systemd).

use tracing_subscriber::EnvFilter;

/// Initialise tracing once.
pub fn init() -> Result<(), String> {
    let filter = EnvFilter::try_from_env("WARD_LOG")
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| format!("WARD_LOG: {e}"))?;
    let format = std::env::var("WARD_LOG_FORMAT").unwrap_or_else(|_| "text".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format.as_str() {
        "text" => builder.try_init(),
        "json" => builder.json().try_init(),
        other => return Err(format!("WARD_LOG_FORMAT: {other:?} is not text or json")),
    }
    .map_err(|e| format!("tracing: {e}"))
}
