//! The repository's rule packs compile and pass their own tests (message tests included).

use std::path::Path;

#[test]
fn repository_packs_pass_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let report = moat_filter::cli::check_dir(&dir, &moat_rules::CompileOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let default = report
        .packs
        .iter()
        .find(|p| p.0 == "default")
        .expect("default pack present");
    assert!(default.2 >= 30, "default pack has {} rules", default.2);
    assert!(report.tests >= 15, "{} tests ran", report.tests);
}
