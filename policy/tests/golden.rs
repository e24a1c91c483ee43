//! Golden files: the rendered nft JSON of the example policy, per gateway.
//! Regenerate with `WARD_BLESS=1 cargo test -p ward-policy --test golden`.

use std::path::Path;

#[test]
fn example_nft_json_matches_golden() {
    let text = include_str!("../examples/hospital.toml");
    let (policy, _) =
        ward_policy::load("hospital.toml", text, &Default::default()).expect("valid example");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("WARD_BLESS").is_some();
    for gateway in policy.gateways.keys() {
        let plan = ward_policy::compile(&policy, gateway).expect("compiles");
        let value: serde_json::Value =
            serde_json::from_str(&ward_policy::nft::render_json(&plan)).expect("valid json");
        let rendered = serde_json::to_string_pretty(&value).expect("json") + "\n";
        let path = dir.join(format!("{gateway}.nft.json"));
        if bless {
            std::fs::create_dir_all(&dir).expect("create golden dir");
            std::fs::write(&path, &rendered).expect("write golden");
            continue;
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with WARD_BLESS=1)", path.display()));
        assert!(
            golden == rendered,
            "{} differs from the rendered ruleset; review and rerun with WARD_BLESS=1",
            path.display()
        );
    }
}
