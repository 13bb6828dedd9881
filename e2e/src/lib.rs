//! End-to-end harness of the operator: a real Kubernetes control plane (etcd and
//! kube-apiserver, built from their Go modules by `e2e/setup.sh`) on loopback, the real
//! `kalam-operator` binary against it, and real `kalamdb` processes standing in for the pods
//! of a StatefulSet (no kubelet runs here, so nothing else would start them).
//!
//! - [`control_plane`]: etcd + kube-apiserver, started once per test process, with a
//!   generated CA, serving certificate, service-account keys and an admin token.
//! - [`kube_api`]: applying YAML (server-side apply, optionally dry-run), waiting on objects,
//!   and the status writes the absent controllers would make.
//! - [`pod`]: runs a `kalamdb` process from a StatefulSet pod template the way a kubelet would
//!   (mounts from the ConfigMap and Secrets, env from Secret keys, the container's args).
//! - [`operator`]: a `kalam-operator run` process with its log and metrics port.
//! - [`process`]: child processes that die with the test process, free ports, polling.

pub mod control_plane;
pub mod kube_api;
pub mod operator;
pub mod pod;
pub mod process;

/// The workspace root (where `crds/`, `charts/` and `examples/` live): from the
/// `CARGO_MANIFEST_DIR` cargo sets when it runs the tests, so that a test binary a shared
/// `CARGO_TARGET_DIR` kept from a checkout elsewhere reads this checkout's files; the path
/// compiled in when run by hand.
pub fn repo_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .parent()
        .expect("e2e/ is inside the workspace")
        .to_path_buf()
}

/// A binary built by the workspace next to the running test binary
/// (`target/<profile>/deps/it-<hash>` -> `target/<profile>/<name>`).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: run the workspace tests (`cargo test --workspace`)",
        bin.display()
    );
    bin
}
