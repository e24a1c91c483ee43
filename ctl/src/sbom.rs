//! `wardctl sbom`: the appliance's CycloneDX 1.5 SBOM.
//!
//! `sbom generate` builds it (at image build time) from `cargo metadata`
//! (the Rust components actually linked into `wardd` and `wardctl`: normal
//! dependencies only) and a dpkg status file (the image's Debian packages,
//! with the licence from each package's machine-readable copyright file where
//! there is one). `sbom` prints the SBOM shipped in the image.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::Exit;

/// Where the image keeps its SBOM.
pub const SHIPPED: &str = "/usr/share/ward/sbom.cdx.json";

#[derive(Debug, Subcommand)]
pub enum SbomCommand {
    /// Build the SBOM from cargo metadata and a dpkg status file.
    Generate {
        /// Output of `cargo metadata --format-version 1 --locked`.
        #[arg(long)]
        cargo_metadata: PathBuf,
        /// dpkg status file of the image (its /var/lib/dpkg/status).
        #[arg(long)]
        dpkg_status: Option<PathBuf>,
        /// Directory holding /usr/share/doc/<package>/copyright files.
        #[arg(long)]
        doc_root: Option<PathBuf>,
    },
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

pub fn run(cmd: Option<SbomCommand>, file: Option<PathBuf>) -> anyhow::Result<Exit> {
    match cmd {
        None => {
            let path = file.unwrap_or_else(|| PathBuf::from(SHIPPED));
            let text = read(&path).context(
                "the SBOM is built with the image; outside it, use `wardctl sbom generate`",
            )?;
            print!("{text}");
            Ok(Exit::Ok)
        }
        Some(SbomCommand::Generate {
            cargo_metadata,
            dpkg_status,
            doc_root,
        }) => {
            let meta: Value =
                serde_json::from_str(&read(&cargo_metadata)?).context("parsing cargo metadata")?;
            let mut components = rust_components(&meta)?;
            if let Some(status) = dpkg_status {
                components.extend(debian_components(&read(&status)?, doc_root.as_deref()));
            }
            let version = meta["packages"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "ward-gateway"))
                .and_then(|p| p["version"].as_str())
                .unwrap_or("0.0.0")
                .to_owned();
            let bom = json!({
                "bomFormat": "CycloneDX",
                "specVersion": "1.5",
                "serialNumber": format!("urn:uuid:{}", uuid_v4()?),
                "version": 1,
                "metadata": {
                    "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
                    "tools": [{"vendor": "Ward", "name": "wardctl", "version": env!("CARGO_PKG_VERSION")}],
                    "component": {
                        "type": "application",
                        "bom-ref": "ward",
                        "name": "ward",
                        "version": version,
                        "description": "Ward zero-trust gateway appliance for legacy medical devices",
                        "licenses": [{"license": {"id": "Apache-2.0"}}],
                    },
                },
                "components": components,
            });
            println!("{}", serde_json::to_string_pretty(&bom)?);
            Ok(Exit::Ok)
        }
    }
}

fn uuid_v4() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    let mut f = std::fs::File::open("/dev/urandom").context("reading /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Crates linked into the shipped binaries: walk normal dependencies from
/// the workspace's binary packages.
fn rust_components(meta: &Value) -> anyhow::Result<Vec<Value>> {
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("cargo metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata has no resolve graph (run it without --no-deps)")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let roots: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| matches!(p["name"].as_str(), Some("ward-gateway" | "ward-ctl")))
        .map(|(id, _)| *id)
        .collect();
    if roots.is_empty() {
        bail!("cargo metadata does not describe the Ward workspace");
    }
    let workspace: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut queue: VecDeque<&str> = roots.into_iter().collect();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()));
            if normal && let Some(pkg) = dep["pkg"].as_str() {
                queue.push_back(pkg);
            }
        }
    }
    let mut out = Vec::new();
    for id in seen.into_iter().filter(|id| !workspace.contains(id)) {
        let Some(p) = packages.get(id) else { continue };
        let (name, version) = (
            p["name"].as_str().unwrap_or(""),
            p["version"].as_str().unwrap_or(""),
        );
        let mut c = json!({
            "type": "library",
            "bom-ref": format!("pkg:cargo/{name}@{version}"),
            "name": name,
            "version": version,
            "purl": format!("pkg:cargo/{name}@{version}"),
        });
        if let Some(l) = p["license"].as_str() {
            c["licenses"] = json!([{"expression": l.replace('/', " OR ")}]);
        }
        if let Some(a) = p["authors"].as_array().filter(|a| !a.is_empty()) {
            c["author"] = json!(
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(r) = p["repository"].as_str() {
            c["externalReferences"] = json!([{"type": "vcs", "url": r}]);
        }
        out.push(c);
    }
    Ok(out)
}

/// The first `License:` of a machine-readable (DEP-5) copyright file.
fn debian_license(doc_root: Option<&Path>, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(
        doc_root?
            .join("usr/share/doc")
            .join(package)
            .join("copyright"),
    )
    .ok()?;
    if !text.starts_with("Format:") {
        return None;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("License:"))
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

/// Installed packages of a dpkg status file.
fn debian_components(status: &str, doc_root: Option<&Path>) -> Vec<Value> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                .map(|v| v.trim().to_owned())
        };
        let (Some(name), Some(version), Some(st)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if st != "install ok installed" {
            continue;
        }
        let arch = field("Architecture").unwrap_or_else(|| "all".into());
        let purl = format!("pkg:deb/debian/{name}@{version}?arch={arch}");
        let mut c = json!({"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl});
        if let Some(m) = field("Maintainer") {
            c["supplier"] = json!({"name": m});
        }
        if let Some(l) = debian_license(doc_root, &name) {
            c["licenses"] = json!([{"license": {"name": l}}]);
        }
        out.push(c);
    }
    out
}
