//! Builds and runs real `wardd` processes with a test CA made at test time.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ward_pki::{Ca, Issued, Kind, Validity};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `tag`.
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ward-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside it.
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("WARDTEST_KEEP_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn target_dir() -> PathBuf {
    // Test and bench binaries live in target/<profile>/deps, the demo in
    // target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary. The first call in a test process runs
/// `cargo build` for the binaries, so a test never runs a stale `wardd`
/// (with `cargo test --workspace` they are already built and this is a no-op).
pub fn binary(name: &str) -> PathBuf {
    // Another build (an installed one, or an older commit for an A/B
    // benchmark) instead of this workspace's.
    if let Some(dir) = std::env::var_os("WARD_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = target_dir().join(name);
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "ward-gateway",
            "-p",
            "ward-ctl",
        ]);
        // Benchmarks run from target/release: build (and use) release binaries.
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(
            status.success() || path.exists(),
            "building the binaries failed"
        );
    });
    path
}

/// A TCP port free on `ip` right now (and its UDP twin, for tunnel servers),
/// never the same twice in one test process: the kernel may hand a just
/// released port out again, and one site must not get two equal ports.
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
        let port = l.local_addr().expect("addr").port();
        let mut given = GIVEN.lock().expect("port list");
        if given.contains(&port) {
            continue;
        }
        if UdpSocket::bind((ip, port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// The site CA of a test, with helpers to issue what tests need.
pub struct TestCa {
    /// The CA.
    pub ca: Ca,
    /// Its directory.
    pub dir: PathBuf,
}

impl TestCa {
    /// A new CA for `trust_domain` under `dir/pki`.
    pub fn new(dir: &TempDir, trust_domain: &str) -> TestCa {
        let path = dir.join("pki");
        let ca = Ca::init(&path, trust_domain).expect("init test CA");
        TestCa { ca, dir: path }
    }

    /// Issue a certificate valid for a day.
    pub fn issue(&mut self, kind: Kind, name: &str) -> Issued {
        self.ca.issue(kind, name, Validity::days(1)).expect("issue")
    }

    /// Issue a certificate valid for a day that also carries `names`.
    pub fn issue_with_names(&mut self, kind: Kind, name: &str, names: &ward_pki::Names) -> Issued {
        self.ca
            .issue_with_names(kind, name, Validity::days(1), names)
            .expect("issue")
    }

    /// Issue a certificate that expired yesterday.
    pub fn issue_expired(&mut self, kind: Kind, name: &str) -> Issued {
        let now = time::OffsetDateTime::now_utc();
        self.ca
            .issue(
                kind,
                name,
                Validity {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                },
            )
            .expect("issue expired")
    }
}

/// A running `wardd`, killed on drop.
pub struct Wardd {
    child: Child,
    log: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
}

impl Wardd {
    /// Start `wardd --config config` with its log at `log`, and wait until it
    /// logs that it is ready. Panics with the log if it does not.
    pub fn start(config: &Path, log: &Path) -> Wardd {
        let filter =
            std::env::var("WARDTEST_WARD_LOG").unwrap_or_else(|_| "info,ward_gateway=debug".into());
        Self::start_with(config, log, &filter)
    }

    /// [`Wardd::start`] with a `WARD_LOG` filter of the caller's choice.
    pub fn start_with(config: &Path, log: &Path, filter: &str) -> Wardd {
        let mut cmd = Command::new(binary("wardd"));
        cmd.arg("--config").arg(config);
        Wardd::spawn(&mut cmd, config, log, Some(filter))
    }

    /// Spawn `cmd` (a `wardd` invocation) with its stderr in `log`, and wait
    /// until it is ready.
    pub fn spawn(cmd: &mut Command, config: &Path, log: &Path, filter: Option<&str>) -> Wardd {
        let file = std::fs::File::create(log).expect("create log");
        let filter = filter.map(str::to_owned).unwrap_or_else(|| {
            std::env::var("WARDTEST_WARD_LOG").unwrap_or_else(|_| "info,ward_gateway=debug".into())
        });
        cmd.env("WARD_LOG", filter);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn wardd");
        let mut w = Wardd {
            child,
            log: log.to_owned(),
            config: config.to_owned(),
        };
        w.wait_log("wardd ready", Duration::from_secs(20));
        w
    }

    /// The metrics address from the ready banner.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("wardd ready"))?;
        let at = line.find("metrics=")? + "metrics=".len();
        line[at..]
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()?
            .parse()
            .ok()
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; panics with the log after `within`.
    pub fn wait_log(&mut self, needle: &str, within: Duration) {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "wardd exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > within {
                panic!(
                    "wardd did not log {needle:?} within {within:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Count lines of the log containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        BufReader::new(self.log().as_bytes())
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Send a signal by name (e.g. "HUP", "TERM", "KILL").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Wait for the process to exit; its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wardd did not exit within {within:?}:\n{}", self.log());
    }
}

impl Drop for Wardd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- wardd log {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// Write a `wardd` configuration for gateway `name`.
pub fn write_config(
    path: &Path,
    name: &str,
    policy: &Path,
    tls: &Issued,
    ca: &TestCa,
    extra: &str,
) {
    let text = format!(
        "gateway = \"{name}\"\npolicy = \"{}\"\nstate_dir = \"{}\"\nadmin_socket = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n{extra}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ncrl = \"{}\"\nwatch_interval = \"1s\"\n\n[limits]\nhandshake_timeout = \"5s\"\ndrain_timeout = \"2s\"\n\n[nft]\napply = false\n",
        policy.display(),
        path.parent()
            .expect("dir")
            .join(format!("state-{name}"))
            .display(),
        path.parent()
            .expect("dir")
            .join(format!("{name}.sock"))
            .display(),
        ca.ca.cert_path().display(),
        tls.cert.display(),
        tls.key.display(),
        ca.ca.crl_path().display(),
    );
    std::fs::write(path, text).expect("write config");
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: SocketAddr, within: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < within,
            "{addr} did not come up within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
