//! The CRD files under `crds/` are generated from the operator's types; this test fails when
//! they drift. `KALAM_UPDATE_CRDS=1` rewrites them instead.

use std::path::PathBuf;

#[test]
fn crds_up_to_date() {
    // The directory cargo runs the test for, not the one it was compiled in: a test binary
    // kept in a shared CARGO_TARGET_DIR may come from a checkout elsewhere.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let dir = manifest_dir.join("../crds");
    let files = kalam_operator::crd::files().expect("rendering the CRDs");
    let update = std::env::var("KALAM_UPDATE_CRDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, contents) in files {
        let path = dir.join(&name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == contents {
            continue;
        }
        if update {
            std::fs::write(&path, &contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        } else {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "crds/{} differ from the types: run `KALAM_UPDATE_CRDS=1 cargo test -p kalam-operator \
         --test it crds_up_to_date` and commit the result",
        stale.join(", crds/")
    );
}
