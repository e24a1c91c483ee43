//! Network namespaces for tests.
//!
//! Tests that need namespaces run whenever the process may create them. When
//! it may not, they print why and skip, except under `CI=true`, where missing
//! privileges are a failure: CI runs as root, so a skip there would hide a
//! broken setup.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted (with everything in it) on drop, also when
/// the test panics.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Why a namespace test cannot run here.
#[derive(Debug)]
pub struct Skip(pub String);

impl Netns {
    /// Create a namespace with a unique name built from `tag`, with loopback up.
    ///
    /// Returns `Err(Skip)` when namespaces cannot be created and `CI` is not
    /// `true`; panics under `CI=true`.
    pub fn new(tag: &str) -> Result<Netns, Skip> {
        let name = format!(
            "ward-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let why = match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run `ip`: {e}")),
        };
        if let Some(why) = why {
            return Err(skip_or_fail(why));
        }
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        if !which("nft") {
            return Err(skip_or_fail("`nft` is not installed".to_owned()));
        }
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a command inside the namespace and return its output.
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?} in {}: {e}", self.name))
    }

    /// Run a command inside the namespace; panic with its stderr if it fails.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Under `CI=true` a missing capability fails the test; elsewhere it skips.
pub fn skip_or_fail(why: String) -> Skip {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and this test cannot run: {why}");
    }
    eprintln!("SKIP: {why} (run as root with nftables and iproute2 installed)");
    Skip(why)
}

/// `let ns = netns_or_skip!("tag");` in a test: returns early on [`Skip`].
#[macro_export]
macro_rules! netns_or_skip {
    ($tag:expr) => {
        match $crate::netns::Netns::new($tag) {
            Ok(ns) => ns,
            Err(_) => return,
        }
    };
}
