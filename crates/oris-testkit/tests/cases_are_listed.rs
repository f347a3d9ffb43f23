//! Every `pub async fn` of the conformance module is a case the macro instantiates: a case
//! written but missing from the list in `macros.rs` would silently never run.

use std::collections::BTreeSet;

#[test]
fn every_case_is_listed_once() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
    let mut defined = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read src/conformance") {
        let path = entry.expect("directory entry").path();
        let text = std::fs::read_to_string(&path).expect("read a case file");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                let name = rest.split('(').next().unwrap_or_default().trim();
                assert!(
                    defined.insert(name.to_owned()),
                    "case `{name}` defined twice"
                );
            }
        }
    }
    let listed: BTreeSet<String> = oris_testkit::conformance::CASES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    assert_eq!(
        listed.len(),
        oris_testkit::conformance::CASES.len(),
        "a case is listed twice"
    );
    assert_eq!(
        defined, listed,
        "cases defined vs. listed in store_conformance!"
    );
}
