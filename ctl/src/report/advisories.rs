//! Offline advisory files for `wardctl report`: CISA's Known Exploited
//! Vulnerabilities catalogue (its JSON feed) and CSAF 2.0 documents (VEX
//! among them), matched to a device by its CVE ids or by vendor, model and
//! firmware.
//!
//! Matching is deliberately plain: names compare case-insensitively after
//! trimming; a KEV entry matches a device by CVE id, or by `vendorProject`
//! and `product` equal to the device's vendor and model (KEV names no
//! versions, so such a match says "this product has a known exploited
//! vulnerability", and is labelled so). A CSAF product matches when the
//! vendor, product name and version branches of its product tree equal the
//! device's vendor, model and firmware (a product without a version branch
//! matches every firmware).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The KEV catalogue's fields the report uses.
#[derive(Debug, Clone, Deserialize)]
struct KevFile {
    #[serde(rename = "catalogVersion", default)]
    catalog_version: String,
    vulnerabilities: Vec<KevEntry>,
}

/// One KEV entry.
#[derive(Debug, Clone, Deserialize)]
pub struct KevEntry {
    /// CVE id.
    #[serde(rename = "cveID")]
    pub cve: String,
    /// Vendor or project.
    #[serde(rename = "vendorProject", default)]
    pub vendor: String,
    /// Product.
    #[serde(default)]
    pub product: String,
    /// Name of the vulnerability.
    #[serde(rename = "vulnerabilityName", default)]
    pub name: String,
    /// When CISA added it.
    #[serde(rename = "dateAdded", default)]
    pub date_added: String,
    /// Known use in ransomware campaigns (`Known` or `Unknown`).
    #[serde(rename = "knownRansomwareCampaignUse", default)]
    pub ransomware: String,
}

/// A vulnerability of one device, from whichever source named it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// CVE id.
    pub id: String,
    /// Title, when a source gives one.
    pub title: Option<String>,
    /// Where it came from: `policy`, `kev`, `csaf:<tracking id>`.
    pub sources: Vec<String>,
    /// Listed in CISA's KEV catalogue.
    pub kev: bool,
    /// When CISA added it to KEV.
    pub kev_date_added: Option<String>,
    /// KEV: known use in ransomware campaigns.
    pub ransomware: bool,
    /// How it was matched: `cve` (the policy names it), `product` (vendor
    /// and model), `product+version` (and firmware).
    pub matched_by: String,
    /// CSAF/VEX status for this device: `known_affected`, `fixed`,
    /// `known_not_affected`, `under_investigation`; none from KEV or the
    /// policy alone.
    pub status: Option<String>,
}

/// One CSAF 2.0 document's use: its products and vulnerabilities.
#[derive(Debug, Clone)]
struct Csaf {
    tracking_id: String,
    /// product id → (vendor, product name, version).
    products: BTreeMap<String, (String, String, Option<String>)>,
    vulnerabilities: Vec<CsafVuln>,
}

#[derive(Debug, Clone)]
struct CsafVuln {
    cve: String,
    title: Option<String>,
    /// status → product ids.
    status: BTreeMap<String, Vec<String>>,
}

/// The advisory files given on the command line.
#[derive(Debug, Default)]
pub struct Advisories {
    kev: Vec<KevEntry>,
    csaf: Vec<Csaf>,
    /// The files read, as the report names them.
    pub sources: Vec<Source>,
}

/// An advisory file the report used.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// `kev` or `csaf`.
    pub kind: String,
    /// The file.
    pub file: PathBuf,
    /// Catalogue version or CSAF tracking id.
    pub version: String,
    /// Entries read.
    pub entries: usize,
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

impl Advisories {
    /// Read the KEV catalogue and CSAF documents.
    pub fn read(kev: &[PathBuf], csaf: &[PathBuf]) -> anyhow::Result<Advisories> {
        let mut a = Advisories::default();
        for file in kev {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading KEV catalogue {}", file.display()))?;
            let k: KevFile = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not CISA's KEV JSON catalogue (expected catalogVersion and vulnerabilities[].cveID)",
                    file.display()
                )
            })?;
            a.sources.push(Source {
                kind: "kev".into(),
                file: file.clone(),
                version: k.catalog_version.clone(),
                entries: k.vulnerabilities.len(),
            });
            a.kev.extend(k.vulnerabilities);
        }
        for file in csaf {
            let doc = read_csaf(file)?;
            a.sources.push(Source {
                kind: "csaf".into(),
                file: file.clone(),
                version: doc.tracking_id.clone(),
                entries: doc.vulnerabilities.len(),
            });
            a.csaf.push(doc);
        }
        Ok(a)
    }

    /// What is known of a device: the policy's CVE ids, enriched and joined
    /// by the advisories.
    pub fn findings(
        &self,
        listed: &[String],
        vendor: Option<&str>,
        model: Option<&str>,
        firmware: Option<&str>,
    ) -> Vec<Finding> {
        let mut by_id: BTreeMap<String, Finding> = BTreeMap::new();
        fn entry<'m>(
            by_id: &'m mut BTreeMap<String, Finding>,
            id: &str,
            matched_by: &str,
        ) -> &'m mut Finding {
            by_id.entry(id.to_owned()).or_insert_with(|| Finding {
                id: id.to_owned(),
                title: None,
                sources: Vec::new(),
                kev: false,
                kev_date_added: None,
                ransomware: false,
                matched_by: matched_by.to_owned(),
                status: None,
            })
        }
        for id in listed {
            entry(&mut by_id, id, "cve").sources.push("policy".into());
        }
        let (v, m) = (vendor.map(norm), model.map(norm));
        let fw = firmware.map(norm);
        for doc in &self.csaf {
            let ours: Vec<(&String, bool)> = doc
                .products
                .iter()
                .filter(|(_, (pv, pn, _))| {
                    v.as_deref() == Some(&norm(pv)) && m.as_deref() == Some(&norm(pn))
                })
                .filter_map(|(id, (_, _, ver))| match ver {
                    None => Some((id, false)),
                    Some(ver) if fw.as_deref() == Some(&norm(ver)) => Some((id, true)),
                    Some(_) => None,
                })
                .collect();
            for vuln in &doc.vulnerabilities {
                let listed_here = listed.iter().any(|l| l.eq_ignore_ascii_case(&vuln.cve));
                for (status, ids) in &vuln.status {
                    let Some((_, versioned)) = ours.iter().find(|(id, _)| ids.contains(id)) else {
                        continue;
                    };
                    // A VEX "not affected" for a CVE nobody listed says nothing.
                    if status == "known_not_affected" && !listed_here {
                        continue;
                    }
                    let how = if listed_here {
                        "cve"
                    } else if *versioned {
                        "product+version"
                    } else {
                        "product"
                    };
                    let f = entry(&mut by_id, &vuln.cve, how);
                    f.status = Some(status.clone());
                    if f.title.is_none() {
                        f.title.clone_from(&vuln.title);
                    }
                    f.sources.push(format!("csaf:{}", doc.tracking_id));
                }
            }
        }
        // KEV last: it flags what the policy and the CSAF documents found,
        // and adds what it names for the device's product.
        for k in &self.kev {
            let by_cve =
                by_id.contains_key(&k.cve) || listed.iter().any(|l| l.eq_ignore_ascii_case(&k.cve));
            let by_product =
                v.as_deref() == Some(&norm(&k.vendor)) && m.as_deref() == Some(&norm(&k.product));
            if by_cve || by_product {
                let f = entry(&mut by_id, &k.cve, if by_cve { "cve" } else { "product" });
                f.kev = true;
                f.kev_date_added = Some(k.date_added.clone());
                f.ransomware = k.ransomware.eq_ignore_ascii_case("known");
                if f.title.is_none() && !k.name.is_empty() {
                    f.title = Some(k.name.clone());
                }
                f.sources.push("kev".into());
            }
        }
        by_id.into_values().collect()
    }
}

/// Read a CSAF 2.0 document: tracking id, product tree, vulnerabilities.
fn read_csaf(file: &Path) -> anyhow::Result<Csaf> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading CSAF document {}", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    let version = v["document"]["csaf_version"].as_str().unwrap_or_default();
    if version != "2.0" {
        bail!(
            "{}: document.csaf_version is {:?}; this wardctl reads CSAF 2.0",
            file.display(),
            version
        );
    }
    let tracking_id = v["document"]["tracking"]["id"]
        .as_str()
        .with_context(|| format!("{}: document.tracking.id missing", file.display()))?
        .to_owned();
    let mut products = BTreeMap::new();
    if let Some(branches) = v["product_tree"]["branches"].as_array() {
        for b in branches {
            walk(b, &mut Vec::new(), &mut products);
        }
    }
    let mut vulnerabilities = Vec::new();
    for vuln in v["vulnerabilities"].as_array().into_iter().flatten() {
        let Some(cve) = vuln["cve"].as_str() else {
            continue;
        };
        let status = vuln["product_status"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, ids)| {
                let ids = ids
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect();
                (k.clone(), ids)
            })
            .collect();
        vulnerabilities.push(CsafVuln {
            cve: cve.to_owned(),
            title: vuln["title"].as_str().map(str::to_owned),
            status,
        });
    }
    Ok(Csaf {
        tracking_id,
        products,
        vulnerabilities,
    })
}

/// Walk a CSAF branch: `vendor` / `product_name` / `product_version`
/// categories name a product; a leaf's `product.product_id` is its id.
fn walk(
    b: &serde_json::Value,
    path: &mut Vec<(String, String)>,
    out: &mut BTreeMap<String, (String, String, Option<String>)>,
) {
    let category = b["category"].as_str().unwrap_or_default().to_owned();
    let name = b["name"].as_str().unwrap_or_default().to_owned();
    path.push((category, name));
    if let Some(id) = b["product"]["product_id"].as_str() {
        let find = |c: &str| {
            path.iter()
                .rev()
                .find(|(cat, _)| cat == c)
                .map(|(_, n)| n.clone())
        };
        if let (Some(vendor), Some(product)) = (find("vendor"), find("product_name")) {
            out.insert(id.to_owned(), (vendor, product, find("product_version")));
        }
    }
    for child in b["branches"].as_array().into_iter().flatten() {
        walk(child, path, out);
    }
    path.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEV: &str = include_str!("../../../tests/data/kev.json");
    const CSAF: &str = include_str!("../../../tests/data/csaf-acme-somascan.json");

    fn advisories() -> Advisories {
        let dir = std::env::temp_dir().join(format!("ward-adv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (k, c) = (dir.join("kev.json"), dir.join("csaf.json"));
        std::fs::write(&k, KEV).expect("kev");
        std::fs::write(&c, CSAF).expect("csaf");
        let a = Advisories::read(&[k], &[c]).expect("reads");
        std::fs::remove_dir_all(&dir).ok();
        a
    }

    /// The CT: its listed CVE flagged by KEV and confirmed by the vendor's
    /// VEX; the VEX adds one for its firmware (flagged by KEV, ransomware
    /// known) and its "not affected" for a CVE nobody listed says nothing;
    /// another firmware, or another device, gets nothing.
    #[test]
    fn matches_by_cve_product_and_version() {
        let a = advisories();
        let f = a.findings(
            &["CVE-2019-0708".into()],
            Some("Acme Medical"),
            Some("SomaScan 64"),
            Some("VA48C (Windows 7 embedded)"),
        );
        let ids: Vec<(&str, bool, &str, Option<&str>)> = f
            .iter()
            .map(|x| {
                (
                    x.id.as_str(),
                    x.kev,
                    x.matched_by.as_str(),
                    x.status.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                (
                    "CVE-2017-0144",
                    true,
                    "product+version",
                    Some("known_affected")
                ),
                ("CVE-2019-0708", true, "cve", Some("known_affected")),
            ],
            "{f:#?}"
        );
        assert!(f[1].sources.contains(&"policy".to_owned()));
        assert!(f[0].ransomware);
        let other = a.findings(&[], Some("acme medical"), Some("somascan 64"), Some("VB10"));
        assert_eq!(other.len(), 0, "{other:#?}");
        let unknown = a.findings(&[], Some("Infusa"), Some("LVP-200"), Some("3.1.4"));
        assert!(unknown.is_empty());
    }
}
